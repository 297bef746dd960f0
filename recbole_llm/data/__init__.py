"""Dataset hooks: atomic-file checks, item text and user histories."""
from recbole_llm.data.atomic import AtomicFileError, check_dataset_files
from recbole_llm.data.text import CTRTextDataset, ItemTextMixin, SequentialTextDataset, TextDataset

__all__ = ["AtomicFileError", "check_dataset_files", "CTRTextDataset", "ItemTextMixin", "TextDataset",
           "SequentialTextDataset"]
