"""Row-level checks of atomic files: each test damages a copy of the tiny data."""
import re

import pytest

from conftest import BEAUTY_TINY, ML_TINY
from recbole_llm.config import Config
from recbole_llm.data import AtomicFileError
from recbole_llm.data.atomic import check_dataset_files


def _config(data, dataset="ml-tiny", **settings):
    base = ML_TINY if dataset == "ml-tiny" else BEAUTY_TINY
    return Config(model="BPR", dataset=dataset, config_dict=dict(base, data_path=str(data), **settings))


def _file(data, dataset, suffix):
    return data / dataset / f"{dataset}.{suffix}"


def _set_cell(path, line, field, value: bytes):
    """Replace one cell (1-based physical line, field name) of a tab-separated file."""
    lines = path.read_bytes().split(b"\n")
    names = [c.split(b":")[0] for c in lines[0].split(b"\t")]
    cells = lines[line - 1].split(b"\t")
    cells[names.index(field.encode())] = value
    lines[line - 1] = b"\t".join(cells)
    path.write_bytes(b"\n".join(lines))


def _fails(config, *fragments):
    with pytest.raises(AtomicFileError) as err:
        check_dataset_files(config)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
    return str(err.value)


def test_untouched_tiny_datasets_pass(data_copy):
    assert set(check_dataset_files(_config(data_copy))) == {"inter", "item"}
    assert set(check_dataset_files(_config(data_copy, "beauty-tiny"))) == {"inter", "item"}
    every = check_dataset_files(_config(data_copy, load_col=None, item_text_fields=None))
    assert set(every) == {"inter", "item", "user"}
    beauty = check_dataset_files(_config(data_copy, "beauty-tiny", load_col=None))
    assert set(beauty) == {"inter", "item"}


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "NaN", "Infinity"])
def test_non_finite_float_is_named(data_copy, value):
    _set_cell(_file(data_copy, "ml-tiny", "inter"), 5, "timestamp", value.encode())
    message = _fails(_config(data_copy), "ml-tiny.inter", "line 5", "'timestamp'", "non-finite")
    assert repr(value) in message


def test_non_finite_float_in_item_file(data_copy):
    _set_cell(_file(data_copy, "beauty-tiny", "item"), 30, "price", b"inf")
    _fails(_config(data_copy, "beauty-tiny"), "beauty-tiny.item", "line 30", "'price'", "non-finite")


RATING_IS_LABEL = [{"threshold": {"rating": 4}},                  # CTR labels from the rating
                   {"LABEL_FIELD": "rating", "threshold": None}]   # rating prediction


@pytest.mark.parametrize("settings", RATING_IS_LABEL)
@pytest.mark.parametrize("value", ["", "NaN", "nan"])
def test_empty_or_nan_label_is_named(data_copy, value, settings):
    _set_cell(_file(data_copy, "ml-tiny", "inter"), 7, "rating", value.encode())
    _fails(_config(data_copy, **settings), "ml-tiny.inter", "line 7", "label field 'rating'",
           "column mean")


def test_empty_cells_outside_labels_stay_allowed(data_copy):
    # other float fields may be missing (RecBole fills them), so may a rating that is only a
    # feature (BPR, no threshold) or that is not loaded
    _set_cell(_file(data_copy, "ml-tiny", "inter"), 7, "timestamp", b"")
    _set_cell(_file(data_copy, "ml-tiny", "inter"), 8, "rating", b"")
    check_dataset_files(_config(data_copy))
    check_dataset_files(_config(data_copy, threshold={"rating": 4},
                                load_col={"inter": ["user_id", "item_id", "timestamp"]}))
    with pytest.raises(AtomicFileError, match=r"line 8: label field 'rating'"):
        check_dataset_files(_config(data_copy, threshold={"rating": 4}))


@pytest.mark.parametrize("line", [4, 3000])
def test_undecodable_bytes_name_line_and_encoding(data_copy, line):
    # line 4 fails in the header's first read block, line 3000 deep in the row pass
    _set_cell(_file(data_copy, "ml-tiny", "inter"), line, "item_id", b"12\xff3")
    _fails(_config(data_copy), "ml-tiny.inter", f"line {line}:", "field 'item_id'", "b'\\xff'",
           "utf-8", "`encoding`")


def test_undecodable_item_text_is_named(data_copy):
    _set_cell(_file(data_copy, "beauty-tiny", "item"), 900, "brand", "Lanc\u00f4me".encode("latin-1"))
    _fails(_config(data_copy, "beauty-tiny"), "beauty-tiny.item", "line 900:", "field 'brand'",
           "`encoding`")
    # the same file read with the right setting decodes (its text is then mojibake, not an error)
    check_dataset_files(_config(data_copy, "beauty-tiny", encoding="latin-1"))


def test_unbalanced_quote_swallowing_lines(data_copy):
    path = _file(data_copy, "beauty-tiny", "item")
    title = path.read_text().split("\n")[19].split("\t")[1]
    _set_cell(path, 20, "title", b'"' + title.encode())
    _fails(_config(data_copy, "beauty-tiny"), "beauty-tiny.item", 'unbalanced quote (") in field',
           "'title' at line 20")


def test_unbalanced_quote_past_csv_field_limit(data_copy):
    # no later quote: the cell would swallow the rest of the file (> csv's 128 KiB field limit)
    _set_cell(_file(data_copy, "ml-tiny", "inter"), 3, "item_id", b'"302')
    _fails(_config(data_copy), "ml-tiny.inter", 'unbalanced quote (") in field', "'item_id' at line 3")


def test_item_file_is_row_checked_for_item_text(data_copy):
    # load_col names only .inter, but the text hook reads .item
    _set_cell(_file(data_copy, "ml-tiny", "item"), 12, "genre", b"Drama\tWestern")
    _fails(_config(data_copy), "ml-tiny.item", "line 12", "7 cells, expected 6")
    # without item text and with load_col naming only .inter, RecBole never reads .item
    check_dataset_files(_config(data_copy, item_text_fields=None))


def test_item_file_needed_for_item_text(data_copy):
    _file(data_copy, "ml-tiny", "item").unlink()
    with pytest.raises(FileNotFoundError, match=r"ml-tiny\.item is missing \(item_text_fields"):
        check_dataset_files(_config(data_copy))


def test_every_atomic_file_checked_without_load_col(data_copy):
    _set_cell(_file(data_copy, "ml-tiny", "user"), 9, "age", b"")
    user = _file(data_copy, "ml-tiny", "user")
    user.write_text(user.read_text().replace("\t\t", "\t", 1))   # line 9 loses a cell
    _fails(_config(data_copy, load_col=None, item_text_fields=None), "ml-tiny.user", "line 9",
           "4 cells, expected 5")
    check_dataset_files(_config(data_copy, item_text_fields=None))   # load_col leaves .user out


def test_header_only_inter_file(data_copy):
    path = _file(data_copy, "ml-tiny", "inter")
    path.write_text(path.read_text().split("\n")[0] + "\n\n")
    message = _fails(_config(data_copy), "ml-tiny.inter", "has no interactions")
    assert re.search(r"ml-tiny\.inter: has no interactions", message)


def test_non_finite_value_in_a_float_seq_cell(data_copy):
    folder = data_copy / "ml-tiny"
    path = folder / "ml-tiny.user"
    lines = path.read_text().split("\n")
    lines[0] += "\temb:float_seq"
    for i in range(1, len(lines)):
        if lines[i]:
            lines[i] += "\t0.5 1.5" if i != 3 else "\t0.5 inf"
    path.write_text("\n".join(lines))
    config = Config(model="BPR", dataset="ml-tiny", config_dict=dict(ML_TINY, data_path=str(data_copy),
                                                                      load_col=None))
    with pytest.raises(AtomicFileError, match=r"ml-tiny\.user, line 4: field 'emb' holds the non-finite value 'inf'"):
        check_dataset_files(config)
