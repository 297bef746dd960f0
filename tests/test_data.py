import numpy as np
import pytest

from conftest import BEAUTY_TINY, DATA, ML_TINY
from recbole_llm.config import Config
from recbole_llm.data import AtomicFileError, SequentialTextDataset, TextDataset
from recbole_llm.data.atomic import check_dataset_files
from recbole_llm.quick_start import create_dataset


def _write(folder, name, suffix, text):
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / name / f"{name}.{suffix}").write_text(text)


def test_missing_values_are_filled_as_recbole_intends(tmp_path):
    inter = "user_id:token\titem_id:token\trating:float\n" + \
            "u1\ti1\t4\nu1\ti2\t\nu2\ti1\t2\nu2\ti3\t3\nu3\ti2\t5\n"
    item = "item_id:token\tprice:float\tbrand:token\ni1\t10\tacme\ni2\t\t\ni3\t20\tzeta\n"
    _write(tmp_path, "nan", "inter", inter)
    _write(tmp_path, "nan", "item", item)
    config = Config(model="BPR", dataset="nan", config_dict={
        "data_path": str(tmp_path), "state": "WARNING",
        "load_col": {"inter": ["user_id", "item_id", "rating"],
                     "item": ["item_id", "price", "brand"]}})
    dataset = create_dataset(config)
    rating = np.asarray(dataset.inter_feat["rating"])
    assert not np.isnan(rating).any()
    assert sorted(rating.tolist()) == sorted([4, 3.5, 2, 3, 5])   # mean of the known ratings
    i2 = dataset.token2id("item_id", "i2")
    price = np.asarray(dataset.item_feat["price"])
    assert not np.isnan(price).any() and price[i2] == pytest.approx(15.0)
    brand = np.asarray(dataset.item_feat["brand"])
    assert brand[i2] == 0                                            # [PAD]
    assert dataset.id2token("brand", int(brand[dataset.token2id("item_id", "i1")])) == "acme"


def test_item_text_and_histories_on_movielens_slice():
    config = Config(model="BPR", dataset="ml-tiny", config_dict=ML_TINY)
    dataset = TextDataset(config)
    texts = dataset.item_texts()
    assert len(texts) == dataset.item_num and texts[0] == ""
    toy = dataset.token2id("item_id", "1")
    assert texts[toy] == "title: Toy Story (1995); release_year: 1995; genre: Animation Children's Comedy"
    hist = dataset.user_histories()
    u1 = dataset.token2id("user_id", "196")
    frame = dataset.inter_feat
    times = frame["timestamp"][frame["user_id"] == u1]
    rows = [line for line in open(f"{DATA}/ml-tiny/ml-tiny.inter") if line.startswith("196\t")]
    assert len(hist[u1]) == len(times) == len(rows) > 10
    # time order: timestamps of the history are non-decreasing
    lookup = {(u, i): t for u, i, t in zip(dataset.inter_feat["user_id"].tolist(),
                                           dataset.inter_feat["item_id"].tolist(),
                                           dataset.inter_feat["timestamp"].tolist())}
    ts = [lookup[(u1, i)] for i in hist[u1].tolist()]
    assert ts == sorted(ts)
    # item features seen by models are unchanged: the text is not loaded as features
    assert dataset.item_feat is None or "title" not in dataset.item_feat


def test_sequential_histories_exclude_valid_and_test():
    from recbole.data import data_preparation
    config = Config(model="SASRec", dataset="ml-tiny",
                    config_dict=dict(ML_TINY, MAX_ITEM_LIST_LENGTH=500))
    dataset = SequentialTextDataset(config)
    full = dataset.user_histories()
    train, valid, test = data_preparation(config, dataset)
    # RecBole's own sequence order (float32 timestamps can tie) is the reference
    seen = [d.dataset.user_histories() for d in (train, valid, test)]
    for u in range(1, dataset.user_num):
        train_h, valid_h, test_h = seen[0][u], seen[1][u], seen[2][u]
        for shorter, longer in ((train_h, valid_h[:-1]), (valid_h, test_h[:-1])):
            m = min(len(shorter), len(longer))       # histories are capped at 501 items
            assert m > 0 and np.array_equal(shorter[-m:], longer[-m:])
        if len(full[u]) <= 500:                         # not capped by MAX_ITEM_LIST_LENGTH
            assert len(train_h) == len(full[u]) - 2
            assert sorted(test_h.tolist()) == sorted(full[u].tolist())
    assert train.dataset.item_texts() is dataset.item_texts()


def test_item_text_on_beauty_slice():
    config = Config(model="BPR", dataset="beauty-tiny", config_dict=BEAUTY_TINY)
    dataset = TextDataset(config)
    text = dataset.item_texts()[dataset.token2id("item_id", "7806397051")]
    assert text.startswith("title: WAWO 15 Color Professionl Makeup")
    assert "brand: COKA" in text and "Concealers & Neutralizers" in text


def test_missing_text_field_names_field_and_file():
    config = Config(model="BPR", dataset="ml-tiny",
                    config_dict=dict(ML_TINY, item_text_fields=["title", "plot"]))
    with pytest.raises(AtomicFileError, match=r"ml-tiny\.item.*\['plot'\]"):
        TextDataset(config)


@pytest.mark.parametrize("header, row, message", [
    ("user_id\titem_id:token", "1\t2", r"'user_id' is not 'name:type'"),
    ("user_id:tokn\titem_id:token", "1\t2", r"unknown type 'tokn'"),
    ("user_id:token\titem_id:token\trating:float", "1\t2", r"line 3: 2 cells, expected 3"),
    ("user_id:token\titem_id:token\trating:float", "1\t2\tfive", r"'rating' is declared float"),
    ("user_id:token\tproduct:token", "1\t2", r"ITEM_ID_FIELD is 'item_id'"),
])
def test_malformed_atomic_file_is_named(tmp_path, header, row, message):
    first = "1\t3" + ("\t4" if header.count("\t") == 2 else "")
    _write(tmp_path, "bad", "inter", f"{header}\n{first}\n{row}\n")
    config = Config(model="BPR", dataset="bad",
                    config_dict={"data_path": str(tmp_path), "state": "WARNING", "load_col": None})
    with pytest.raises(AtomicFileError, match=message) as err:
        check_dataset_files(config)
    assert "bad.inter" in str(err.value)


def test_unknown_dataset_is_a_clear_error(tmp_path):
    config = Config(model="BPR", dataset="no-such-set", config_dict={"data_path": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="dataset 'no-such-set' not found"):
        create_dataset(config)


def test_load_col_field_missing_from_file():
    config = Config(model="BPR", dataset="ml-tiny", config_dict=dict(
        ML_TINY, load_col={"inter": ["user_id", "item_id", "rating", "timestamp", "mood"]}))
    with pytest.raises(AtomicFileError, match=r"ml-tiny\.inter: load_col asks for field\(s\) \['mood'\]"):
        check_dataset_files(config)


@pytest.mark.parametrize("model", ["BPR", "SASRec"])
def test_split_ratings_never_show_a_later_rating(tmp_path, model):
    """A pair rated 1 in training and 5 again at test time: the training split's
    table has 1 (the mean over every split would be 3), with RecBole's
    normalised timestamps and for sequential rows too."""
    import os
    os.makedirs(tmp_path / "rep")
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(1, 6):
        for k in range(6):
            rows.append(f"{u}\t{u * 10 + k}\t{1 + (u + k) % 5}\t{1000 + 10 * k}")
    rows[1] = "1\t10\t1\t1000"  # user 1 rates item 10 with 1 first...
    rows.append("1\t10\t5\t3000")  # ...and 5 at test time (the user's last interaction)
    (tmp_path / "rep" / "rep.inter").write_text("\n".join(rows) + "\n")
    items = sorted({r.split("\t")[1] for r in rows[1:]})
    (tmp_path / "rep" / "rep.item").write_text(
        "item_id:token\ttitle:token_seq\n" + "".join(f"{i}\titem {i}\n" for i in items))
    from recbole.data import data_preparation
    config = Config(model="Llama4Rec", dataset="rep",
                    config_dict=dict(data_path=str(tmp_path), base_model=model, normalize_all=True,
                                     load_col={"inter": ["user_id", "item_id", "rating", "timestamp"],
                                               "item": ["item_id", "title"]},
                                     item_text_fields=["title"],
                                     train_neg_sample_args=None if model == "SASRec" else
                                     {"distribution": "uniform", "sample_num": 1},
                                     eval_args={"split": {"LS": "valid_and_test"}, "order": "TO",
                                                "group_by": "user", "mode": "full"},
                                     state="ERROR"))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    u, i = dataset.token2id("user_id", "1"), dataset.token2id("item_id", "10")
    assert dataset.rating_of(u, i) == 3.0  # 1 and 5: the mean over every split
    assert train.dataset.split_ratings()[(u, i)] == 1.0
    assert test.dataset.split_ratings()[(u, i)] == (5.0 if model == "BPR" else 3.0)
    assert np.nanmax(np.concatenate(train.dataset.timed_histories()[2])) <= 5
