"""Up-front checks of RecBole atomic files.

RecBole reports a malformed file late and vaguely ("not enough values to
unpack", "'tokn' is not a valid FeatureType", a pandas parser error without a
file name).  These checks run before any loading and name the file, the line
and the field, and what was expected.
"""
import codecs
import csv
import itertools
import math
import os

from recbole.utils import FeatureType

_VALID_TYPES = {t.value for t in FeatureType}


class AtomicFileError(ValueError):
    """An atomic file does not follow RecBole's format."""


def dataset_dir(config) -> str:
    return config["data_path"]


def atomic_path(config, suffix: str) -> str:
    return os.path.join(config["data_path"], f"{config['dataset']}.{suffix}")


def read_header(path: str, sep: str, encoding: str = "utf-8") -> dict:
    """``{field name: type}`` from an atomic file's header line, validated."""
    try:
        with open(path, encoding=encoding) as f:
            header = f.readline().rstrip("\r\n")
    except UnicodeDecodeError:
        # readline decodes a whole block: the bad byte may be on any early line
        raise _decode_error(path, sep, encoding) from None
    if not header:
        raise AtomicFileError(f"{path}: empty file, expected a header line 'name:type{sep}...'")
    fields = {}
    for col, cell in enumerate(header.split(sep), start=1):
        name, colon, ftype = cell.partition(":")
        if not colon or not name:
            raise AtomicFileError(
                f"{path}, header column {col}: '{cell}' is not 'name:type' "
                f"(types: {', '.join(sorted(_VALID_TYPES))}); is field_separator "
                f"{sep!r} right for this file?")
        if ftype not in _VALID_TYPES:
            raise AtomicFileError(
                f"{path}, header column {col}: field '{name}' has unknown type '{ftype}' "
                f"(expected one of {', '.join(sorted(_VALID_TYPES))})")
        if name in fields:
            raise AtomicFileError(f"{path}: field '{name}' appears twice in the header")
        fields[name] = ftype
    return fields


def _field_at(names, column: int) -> str:
    """Name of a 0-based column for messages; extra cells have no header name."""
    return f"'{names[column]}'" if column < len(names) else f"column {column + 1} (beyond the header)"


def _decode_error(path, sep, encoding) -> AtomicFileError:
    """Where a file stops decoding, by line and field.

    The text reader decodes in blocks and its error gives a byte offset in a
    block, not a line; this (error-path only) pass decodes line by line.
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    header, line_no = b"", 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            header = header or raw
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as err:
                return _decode_message(path, sep, encoding, line_no, err, header)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        return _decode_message(path, sep, encoding, line_no, err, header)
    return AtomicFileError(f"{path}: does not decode as {encoding}")


def _decode_message(path, sep, encoding, line_no, err, header) -> AtomicFileError:
    """The message for an undecodable byte: file, line, field and the fix."""
    if line_no == 1:
        where = "the header"
    else:
        header = header.decode(encoding, "replace").rstrip("\r\n")
        names = [cell.partition(":")[0] for cell in header.split(sep)]
        column = err.object[:err.start].count(sep.encode(encoding, "replace"))
        where = "field " + _field_at(names, column)
    return AtomicFileError(
        f"{path}, line {line_no}: bytes {err.object[err.start:err.end]!r} in {where} are not "
        f"valid {encoding} ({err.reason}); set the `encoding` option to the file's encoding "
        f"(e.g. encoding: latin-1) or re-save the file as {encoding}")


def _record_error(path, sep, names, encoding, line_no, csv_error=None) -> AtomicFileError:
    """A record that does not end on its own line, as pandas would read it.

    An unbalanced ``"`` opens a quoted cell that swallows the following lines
    (up to the next ``"``, or csv's field-size limit): report the line and the
    field where it opened, which the parsed record no longer shows.
    """
    with open(path, encoding=encoding, errors="replace", newline="") as f:
        text = next(itertools.islice(f, line_no - 1, None), "").rstrip("\r\n")
    reader = csv.reader([text + "\n", "\n"], delimiter=sep, quotechar='"')
    row = next(reader)
    if reader.line_num > 1:
        # the quote is still open at the end of the line; that cell is the last one
        return AtomicFileError(
            f"{path}: unbalanced quote (\") in field {_field_at(names, len(row) - 1)} at "
            f"line {line_no}; atomic files hold one record per line: close the quote, "
            "double it (\"\") inside a quoted cell, or remove it")
    if csv_error is not None:
        return AtomicFileError(f"{path}, line {line_no}: {csv_error}")
    return AtomicFileError(
        f"{path}, line {line_no}: the record does not end on this line; atomic files hold "
        "one record per line (a quoted cell holds a line break?)")


def _label_fields(config, fields) -> list:
    """The ``.inter`` fields RecBole loads and trains on as labels.

    ``LABEL_FIELD``, and ``RATING_FIELD`` where it is the label or ``threshold``
    turns it into one.  RecBole fills their empty or NaN cells with the column
    mean, a made-up label.  A rating that is only a feature (BPR, no
    ``threshold``) may stay empty like any other float.
    """
    label, rating = config["LABEL_FIELD"], config["RATING_FIELD"]
    candidates = [label]
    if rating and rating != label and rating in (config["threshold"] or {}):
        candidates.append(rating)
    load_col = config["load_col"]
    wanted = load_col.get("inter") if load_col else "*"
    unload = (config["unload_col"] or {}).get("inter") or []
    return [name for name in candidates
            if name and name in fields and name not in unload
            and wanted is not None and (wanted == "*" or name in wanted)]


def _check_rows(path, sep, fields, encoding, labels=(), seq_sep=" ") -> int:
    """One streaming pass over the data rows; returns how many there are.

    Each row is one physical line with as many cells as the header; float
    cells are empty (RecBole fills them) or finite numbers (``inf``/``nan``
    would flow into normalisation and losses); label cells are never empty.
    Reads with csv's quoting, as RecBole's ``pandas.read_csv`` does.
    """
    names = list(fields)
    width = len(names)
    float_cols = [i for i, n in enumerate(names) if fields[n] == "float"]
    seq_cols = [i for i, n in enumerate(names) if fields[n] == "float_seq"]
    label_cols = [names.index(n) for n in labels]
    isfinite = math.isfinite
    rows = line_no = 0
    with open(path, encoding=encoding, newline="") as f:
        reader = csv.reader(f, delimiter=sep, quotechar='"')
        try:
            next(reader)
            line_no = 1
            if reader.line_num != 1:
                raise _record_error(path, sep, names, encoding, 1)
            for line_no, row in enumerate(reader, start=2):
                if reader.line_num != line_no:
                    raise _record_error(path, sep, names, encoding, line_no)
                if len(row) != width:
                    if not row:
                        continue
                    raise AtomicFileError(
                        f"{path}, line {line_no}: {len(row)} cells, expected {width} "
                        f"({sep.join(names)})")
                rows += 1
                for i in float_cols:
                    cell = row[i]
                    if cell:
                        try:
                            ok = isfinite(float(cell))
                        except ValueError:
                            ok = False
                        if not ok:
                            raise _cell_error(path, line_no, names[i], cell, i in label_cols)
                for i in seq_cols:
                    for value in row[i].split(seq_sep) if row[i] else ():
                        try:
                            ok = isfinite(float(value))
                        except ValueError:
                            ok = False
                        if not ok:
                            raise _cell_error(path, line_no, names[i], value, False)
                for i in label_cols:
                    if not row[i]:
                        raise _cell_error(path, line_no, names[i], "", True)
        except csv.Error as err:
            raise _record_error(path, sep, names, encoding, line_no + 1, err) from None
        except UnicodeDecodeError:
            raise _decode_error(path, sep, encoding) from None
    return rows


def _cell_error(path, line_no, name, cell, is_label) -> AtomicFileError:
    """The message for a bad float or label cell (kept out of the row loop)."""
    if is_label and (not cell.strip() or cell.strip().lower().lstrip("+-") == "nan"):
        return AtomicFileError(
            f"{path}, line {line_no}: label field '{name}' is {'empty' if not cell else repr(cell)}; "
            "RecBole would fill it with the column mean; give every interaction a label "
            "or drop the row")
    try:
        float(cell)
    except ValueError:
        return AtomicFileError(
            f"{path}, line {line_no}: field '{name}' is declared float but holds {cell!r}")
    return AtomicFileError(
        f"{path}, line {line_no}: field '{name}' holds the non-finite value {cell!r}; "
        "float cells must be finite numbers (leave the cell empty for a missing value)")


def _files_to_check(config) -> dict:
    """``{suffix: why it is needed, or None if optional}`` of the atomic files RecBole
    (and the item-text hook) will read: with no ``load_col`` RecBole loads every
    atomic file it finds; text models read ``.item`` whatever ``load_col`` says."""
    load_col = config["load_col"]
    wanted = {"inter": "every dataset needs its interactions"}
    if load_col:
        for suffix in load_col:
            wanted.setdefault(suffix, f"load_col asks for the '{suffix}' file")
    else:
        wanted.update({"user": None, "item": None})
    if config["item_text_fields"]:
        wanted["item"] = "item_text_fields reads the item text from it"
    return wanted


def check_dataset_files(config, check_rows: bool = True) -> dict:
    """Validate the dataset's atomic files against the config; returns headers.

    Checks that the dataset folder and its ``.inter`` file exist (and ``.item``
    when ``item_text_fields`` is set), that every header is well formed, that
    the fields named by ``load_col`` and by the ID/time settings the run needs
    are present, and (``check_rows``, one streaming pass per file) that every
    file decodes in ``encoding``, holds one record per line with as many cells
    as its header, finite float cells, non-empty labels, and that the
    ``.inter`` file has data rows.  Files checked: those ``load_col`` names,
    or every ``.inter``/``.user``/``.item`` file when ``load_col`` is empty
    (RecBole then loads them all), plus ``.item`` for item text.
    """
    folder = dataset_dir(config)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"dataset '{config['dataset']}' not found: no folder {folder}. Set --data_path to "
            f"the folder that holds '{config['dataset']}/' (e.g. --data_path=../shared/data); "
            "'ml-100k' is the only dataset name served from RecBole's own wheel.")
    sep = config["field_separator"]
    encoding = config["encoding"] or "utf-8"
    headers = {}
    load_col = config["load_col"] or {}
    for suffix, why in sorted(_files_to_check(config).items()):
        path = atomic_path(config, suffix)
        if not os.path.isfile(path):
            if why:
                raise FileNotFoundError(f"dataset '{config['dataset']}': {path} is missing ({why})")
            continue
        headers[suffix] = fields = read_header(path, sep, encoding)
        wanted = load_col.get(suffix) or []
        missing = [name for name in wanted if name not in fields] if wanted != "*" else []
        if missing:
            raise AtomicFileError(
                f"{path}: load_col asks for field(s) {missing}, the file has {list(fields)}")
        if check_rows:
            labels = _label_fields(config, fields) if suffix == "inter" else ()
            rows = _check_rows(path, sep, fields, encoding, labels, config["seq_separator"] or " ")
            if suffix == "inter" and rows == 0:
                raise AtomicFileError(f"{path}: has no interactions (a header line but no data rows)")
    inter = headers["inter"]
    needed = {"USER_ID_FIELD": config["USER_ID_FIELD"], "ITEM_ID_FIELD": config["ITEM_ID_FIELD"]}
    eval_args = config["eval_args"] or {}
    if eval_args.get("order") == "TO":
        needed["TIME_FIELD (eval_args.order: TO)"] = config["TIME_FIELD"]
    for what, field in needed.items():
        if field not in inter:
            raise AtomicFileError(
                f"{atomic_path(config, 'inter')}: {what} is '{field}', but the file's fields "
                f"are {list(inter)}")
        wanted = load_col.get("inter")
        if wanted not in (None, "*") and field not in wanted:
            raise AtomicFileError(
                f"load_col.inter is {wanted}, which leaves out {what} '{field}'; add it")
    return headers
