"""Up-front checks of RecBole atomic files.

RecBole reports a malformed file late and vaguely ("not enough values to
unpack", "'tokn' is not a valid FeatureType", a pandas parser error without a
file name).  These checks run before any loading and name the file, the line
and the field, and what was expected.
"""
import csv
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
    with open(path, encoding=encoding) as f:
        header = f.readline().rstrip("\r\n")
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


def _check_rows(path, sep, fields, encoding):
    """Every row has as many cells as the header; float cells parse."""
    names = list(fields)
    float_cols = [i for i, n in enumerate(names) if fields[n] == "float"]
    with open(path, encoding=encoding, newline="") as f:
        reader = csv.reader(f, delimiter=sep, quotechar='"')
        next(reader)
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(names):
                if not row:
                    continue
                raise AtomicFileError(
                    f"{path}, line {line_no}: {len(row)} cells, expected {len(names)} "
                    f"({sep.join(names)})")
            for i in float_cols:
                cell = row[i]
                if cell:
                    try:
                        float(cell)
                    except ValueError:
                        raise AtomicFileError(
                            f"{path}, line {line_no}: field '{names[i]}' is declared float "
                            f"but holds {cell!r}") from None


def check_dataset_files(config, check_rows: bool = True) -> dict:
    """Validate the dataset's atomic files against the config; returns headers.

    Checks that the dataset folder and its ``.inter`` file exist, that every
    header is well formed, that the fields named by ``load_col`` and by the
    ID/rating/time settings the run needs are present, and (``check_rows``)
    that each row has the right number of cells.
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
    for suffix in sorted(set(["inter"]) | set(load_col)):
        path = atomic_path(config, suffix)
        if not os.path.isfile(path):
            if suffix == "inter" or suffix in load_col:
                raise FileNotFoundError(
                    f"dataset '{config['dataset']}': {path} is missing "
                    f"(load_col asks for the '{suffix}' file)")
            continue
        headers[suffix] = fields = read_header(path, sep, encoding)
        wanted = load_col.get(suffix) or []
        missing = [name for name in wanted if name not in fields]
        if missing:
            raise AtomicFileError(
                f"{path}: load_col asks for field(s) {missing}, the file has {list(fields)}")
        if check_rows:
            _check_rows(path, sep, fields, encoding)
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
        if wanted is not None and field not in wanted:
            raise AtomicFileError(
                f"load_col.inter is {wanted}, which leaves out {what} '{field}'; add it")
    return headers
