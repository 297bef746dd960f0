"""Each model reads every key of its yaml through its settings object, and the
settings object holds nothing the property files do not define."""
import dataclasses

import pytest
import yaml

from recbole_llm.fingerprint import recbole_keys
from recbole_llm.paths import plugin_file
from recbole_llm.model.eagerllm.settings import EAGERSettings
from recbole_llm.model.elcorec.settings import ELCoRecSettings
from recbole_llm.model.llama4rec.settings import Llama4RecSettings
from recbole_llm.model.screc.settings import SCRecSettings
from recbole_llm.model.eimf.settings import EIMFSettings


def _keys(*parts):
    with open(plugin_file(*parts), encoding="utf-8") as f:
        return set(yaml.safe_load(f))


@pytest.mark.parametrize("model,settings", [("EAGERLLM", EAGERSettings), ("ELCoRec", ELCoRecSettings),
                                            ("Llama4Rec", Llama4RecSettings), ("SCRec", SCRecSettings),
                                            ("EIMF", EIMFSettings)])
def test_settings_cover_the_models_yaml(model, settings):
    fields = {f.name for f in dataclasses.fields(settings)}
    recbole = recbole_keys(model)       # RecBole's trainer and data settings, read by RecBole
    own = _keys("model", f"{model}.yaml")
    assert own - fields - recbole == set(), "keys of the yaml no settings field reads"
    defined = own | _keys("overall.yaml") | recbole
    assert fields - defined == set(), "settings fields no property file defines"


def test_configure_cpu_flushes_denormals():
    """Denormal inputs make MKL's sgemm ~85x slower (an EAGERLLM epoch slowed
    from 0.6 to 8.6 s per step); runs flush them to zero."""
    import torch

    from recbole_llm.utils import configure_cpu

    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-30])
    assert (tiny * 1e-9).item() != 0.0
    configure_cpu(0)
    assert (tiny * 1e-9).item() == 0.0
