"""Every key of the plugin's property files is documented RecBole's way,
``key: value   # (type) description``, and its value is of the declared type.

The ``(type)`` comments are not only documentation: ``recbole_llm.options``
reads them (``declared_kinds``) to check the kinds of the options a user sets,
so a missing or wrong one changes which values a run accepts.
"""
import glob
import os
import re

import pytest
import yaml

from recbole_llm.options import declared_kinds, read_yaml
from recbole_llm.paths import RECBOLE_PROPERTIES

PROPERTIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "properties")
YAML_FILES = sorted(glob.glob(os.path.join(PROPERTIES, "**", "*.yaml"), recursive=True))
TYPE_WORDS = {"int", "integer", "float", "bool", "str", "string", "list", "tuple", "dict", "none"}
# a top-level key line and the first parenthesised group right after its '#'
# (the pattern options.declared_kinds reads)
_DOC = re.compile(r"^([A-Za-z_][\w.-]*)\s*:[^#]*#\s*\(([^)]*)\)")
_KEY_LINE = re.compile(r"^([A-Za-z_][\w.-]*)\s*:")


def _rel(path):
    return os.path.relpath(path, PROPERTIES)


def _kind(value):
    """The kind word of a yaml value, as options.declared_kinds names kinds."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    for kind, types in (("int", int), ("float", float), ("str", str), ("list", (list, tuple)),
                        ("dict", dict)):
        if isinstance(value, types):
            return kind
    return type(value).__name__


def _allowed(kinds):
    """The value kinds a declaration admits: an int where a float is declared;
    None where declared, or for a str, list or dict option (the options check
    accepts None for those: an unset path, field list or mapping)."""
    allowed = set(kinds)
    if "float" in allowed:
        allowed.add("int")
    if allowed & {"str", "list", "dict"}:
        allowed.add("none")
    return allowed


def undocumented_keys(path):
    """Top-level keys of ``path`` without a ``# (type) ...`` comment on their line."""
    with open(path, encoding="utf-8") as f:
        keys = list(yaml.safe_load(f) or {})
    declared = declared_kinds([path])
    return [key for key in keys if key not in declared]


def badly_typed_keys(path):
    """``(key, value, declared kinds)`` for each value not of its declared kind."""
    declared = declared_kinds([path])
    return [(key, value, sorted(declared[key])) for key, value in read_yaml(path).items()
            if key in declared and _kind(value) not in _allowed(declared[key])]


def malformed_type_comments(path):
    """``(line number, text)`` of key lines whose first parenthesised group after
    '#' is not type words joined by 'or' (e.g. ``(paper)`` first, ``(int, path)``)."""
    bad = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not _KEY_LINE.match(line):
                continue
            match = _DOC.match(line)
            words = match.group(2).lower().split() if match else []
            if not (words and words[0] in TYPE_WORDS
                    and all(w in TYPE_WORDS if i % 2 == 0 else w == "or"
                            for i, w in enumerate(words)) and len(words) % 2 == 1):
                bad.append((number, line.rstrip()))
    return bad


def test_property_files_found():
    names = {_rel(p).replace(os.sep, "/") for p in YAML_FILES}
    assert {"overall.yaml", "rating.yaml"} <= names
    assert any(n.startswith("model/") for n in names)
    assert any(n.startswith("dataset/") for n in names)


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_every_key_has_a_type_comment(path):
    missing = undocumented_keys(path)
    assert not missing, (f"{_rel(path)}: keys without a '# (type) description' comment on "
                         f"their line: {missing}")
    with open(path, encoding="utf-8") as f:
        keys = set(yaml.safe_load(f) or {})
    assert set(declared_kinds([path])) == keys  # no comment read for a key the file lacks


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_type_comment_is_type_words_only(path):
    bad = malformed_type_comments(path)
    assert not bad, (f"{_rel(path)}: the first '(...)' after '#' must be the type, e.g. "
                     f"'# (int) (paper) ...' or '# (list or str) ...': {bad}")


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_values_have_their_declared_kind(path):
    bad = badly_typed_keys(path)
    assert not bad, f"{_rel(path)}: values not of their declared type: {bad}"


def test_a_key_declares_one_type_in_every_file():
    # declared_kinds lets the last file win, so a key typed differently in two
    # files would be checked differently depending on the model and dataset
    seen = {}
    for path in YAML_FILES:
        for key, kinds in declared_kinds([path]).items():
            seen.setdefault(key, {})[_rel(path)] = sorted(kinds)
    clashes = {key: where for key, where in seen.items()
               if len({tuple(kinds) for kinds in where.values()}) > 1}
    assert not clashes, f"keys typed differently in different files: {clashes}"


def test_recbole_keys_keep_recbole_types():
    # the plugin's declarations override RecBole's: they may narrow a RecBole
    # key's type (topk: None is no cut-off for a ranking run) but never widen it
    recbole = {}
    for path in glob.glob(os.path.join(RECBOLE_PROPERTIES, "**", "*.yaml"), recursive=True):
        for key, kinds in declared_kinds([path]).items():
            recbole.setdefault(key, set()).update(kinds)
    wider = {}
    for path in YAML_FILES:
        for key, kinds in declared_kinds([path]).items():
            if key in recbole and not kinds <= recbole[key]:
                wider[f"{_rel(path)}:{key}"] = (sorted(kinds), sorted(recbole[key]))
    assert not wider, f"RecBole keys typed outside RecBole's own declaration: {wider}"


# --- the checks themselves catch what they should -----------------------------
def _write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_checks_catch_missing_comments(tmp_path):
    path = _write(tmp_path, "a: 1   # (int) fine\n"
                            "b: 2   # (paper) no type\n"
                            "c: 3\n"
                            "d:\n  x: [1]\n")
    assert undocumented_keys(path) == ["b", "c", "d"]
    assert [n for n, _ in malformed_type_comments(path)] == [2, 3, 4]


def test_checks_catch_malformed_type_groups(tmp_path):
    path = _write(tmp_path, "a: 1   # (int) (paper) fine\n"
                            "b: [1]   # (list or int or None) fine\n"
                            "c: x   # (str, a path) not type words only\n"
                            "d: x   # (str or) dangling or\n")
    assert [n for n, _ in malformed_type_comments(path)] == [3, 4]


def test_checks_catch_wrong_types(tmp_path):
    path = _write(tmp_path, "a: 1.5     # (int) a float typed int\n"
                            "b: 2       # (float) an int is a valid float\n"
                            "c: True    # (int) a bool is no int\n"
                            "d: ~       # (int) None where the type has no None\n"
                            "e: ~       # (int or None) declared None\n"
                            "f: ~       # (str) an unset path\n"
                            "g: [a]     # (str) a list typed str\n"
                            "h: {x: 1}  # (dict) fine\n"
                            "i: 1e-3    # (float) RecBole's float rule\n")
    assert [key for key, _, _ in badly_typed_keys(path)] == ["a", "c", "d", "g"]
