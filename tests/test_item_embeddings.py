"""Item vectors from a file in RecBole's preload_weight convention."""
import numpy as np
import pytest

from conftest import ML_TINY


def _settings(data_copy, extra):
    return dict(ML_TINY, data_path=str(data_copy), **extra)


def test_written_file_preloads_the_encoders_vectors(data_copy, capsys):
    from recbole_llm.config import Config
    from recbole_llm.data import TextDataset
    from recbole_llm.item_embeddings import main
    from recbole_llm.llm.encoder import item_text_embeddings

    assert main([f"--dataset=ml-tiny", f"--data_path={data_copy}",
                 f"--llm_cache_dir={data_copy}/cache",
                 "--item_text_fields=['title', 'release_year', 'genre']"]) == 0
    printed = capsys.readouterr().out
    assert (data_copy / "ml-tiny" / "ml-tiny.itememb").is_file() and "preload_weight" in printed
    settings = dict(additional_feat_suffix=["itememb"], alias_of_item_id=["iid"],
                    preload_weight={"iid": "item_emb"}, item_embedding_field="iid",
                    load_col=dict(ML_TINY["load_col"], itememb=["iid", "item_emb"]))
    config = Config(model="BPR", dataset="ml-tiny", config_dict=_settings(data_copy, settings))
    dataset = TextDataset(config)
    loaded = item_text_embeddings(dataset, config)
    encoded = item_text_embeddings(dataset, dict(config.final_config_dict, item_embedding_field=None,
                                                 llm_cache_dir=f"{data_copy}/cache"))
    assert loaded.shape == encoded.shape and np.abs(loaded - encoded).max() < 1e-5


def test_elcorec_runs_from_the_file_without_an_encoder(data_copy):
    """The encoder folder does not exist: the run never needs it."""
    from test_elcorec import TINY_CTR

    from recbole_llm.item_embeddings import main
    from recbole_llm.quick_start import run_recbole_llm

    assert main([f"--dataset=ml-tiny", f"--data_path={data_copy}",
                 f"--llm_cache_dir={data_copy}/cache",
                 "--item_text_fields=['title', 'release_year', 'genre']"]) == 0
    settings = dict(TINY_CTR, data_path=str(data_copy), text_encoder_path="/no/such/encoder",
                    additional_feat_suffix=["itememb"], alias_of_item_id=["iid"],
                    preload_weight={"iid": "item_emb"}, item_embedding_field="iid",
                    load_col=dict(TINY_CTR["load_col"], itememb=["iid", "item_emb"]),
                    llm_cache_dir=str(data_copy / "run-cache"))
    result = run_recbole_llm(model="ELCoRec", dataset="ml-tiny", config_dict=settings, argv=[])
    assert 0 <= result["test_result"]["auc"] <= 1


def test_items_missing_from_the_file_are_an_error_naming_it(data_copy):
    from recbole_llm.config import Config
    from recbole_llm.data import TextDataset
    from recbole_llm.item_embeddings import main
    from recbole_llm.llm.encoder import item_text_embeddings

    assert main([f"--dataset=ml-tiny", f"--data_path={data_copy}",
                 f"--llm_cache_dir={data_copy}/cache",
                 "--item_text_fields=['title', 'release_year', 'genre']"]) == 0
    path = data_copy / "ml-tiny" / "ml-tiny.itememb"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3]) + "\n")  # three items lose their vector
    settings = dict(additional_feat_suffix=["itememb"], alias_of_item_id=["iid"],
                    preload_weight={"iid": "item_emb"}, item_embedding_field="iid",
                    load_col=dict(ML_TINY["load_col"], itememb=["iid", "item_emb"]))
    config = Config(model="BPR", dataset="ml-tiny", config_dict=_settings(data_copy, settings))
    with pytest.raises(ValueError, match="3 of .* items have no vector"):
        item_text_embeddings(TextDataset(config), config)
