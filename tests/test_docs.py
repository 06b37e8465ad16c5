"""The README says what the code does: signatures, settings and their defaults, errors."""

import inspect
import os
import re

import pytest

import hubcache
from hubcache import config

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.fixture(scope="module")
def readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def section(text, title):
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def documented_signatures(readme):
    """{name: "(params)"} from the Python API section's code block."""
    block = section(readme, "Python API").split("```python", 1)[1].split("```", 1)[0]
    found = {}
    for line in block.splitlines():
        m = re.match(r"hubcache\.(\w+)(\(.*?\))(?:\s*->.*?)?\s*(?:#.*)?$", line.strip())
        if m:
            found[m.group(1)] = m.group(2)
    return found


@pytest.mark.parametrize("name", ["load", "resolve", "prefetch"])
def test_python_api_signatures_match_the_code(readme, name):
    documented = documented_signatures(readme)
    assert name in documented, f"hubcache.{name} is not in the README's Python API block"
    actual = inspect.signature(getattr(hubcache, name))
    shown = str(actual.replace(return_annotation=inspect.Signature.empty))
    # Compare names, kinds and defaults: annotations are left out of the README.
    parts = []
    star = False
    for p in actual.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    assert documented[name] == "(" + ", ".join(parts) + ")", shown


def documented_settings(readme):
    """{variable: default text} of the configuration table."""
    rows = {}
    for line in section(readme, "Configuration").splitlines():
        m = re.match(r"\|\s*`([A-Z_]+)`\s*\|\s*(.*?)\s*\|", line)
        if m:
            default = m.group(2)
            rows[m.group(1)] = default.strip("`") if default.startswith("`") else None
    return rows


def test_every_setting_is_documented_and_nothing_else(readme):
    documented = documented_settings(readme)
    variables = {v for _, names in config.SETTING_VARIABLES for v in names}
    ours = {v for v in documented if v.startswith(("HUBCACHE_", "TFHUB_"))}
    assert variables - ours == set(), "settings missing from the README's table"
    assert ours - variables == set(), "README documents settings the code does not read"


def test_documented_defaults_are_the_code_defaults(readme):
    """Setting each variable to its documented default changes nothing."""
    defaults = config.load_settings(environ={})
    checked = 0
    for name, variables in config.SETTING_VARIABLES:
        for variable in variables:
            text = documented_settings(readme).get(variable)
            if text is None or not re.match(r"^[\w.:/-]+$", text):
                continue  # no default ("—"), or prose
            value = getattr(config.load_settings(environ={variable: text}), name)
            assert value == getattr(defaults, name), f"{variable}: README says {text}, the code uses {getattr(defaults, name)!r}"
            checked += 1
    assert checked >= 12


def test_every_error_class_is_in_the_errors_table(readme):
    table = section(readme, "Errors")
    for name in hubcache.__all__:
        obj = getattr(hubcache, name)
        if inspect.isclass(obj) and issubclass(obj, hubcache.HubcacheError) and obj is not hubcache.HubcacheError:
            assert f"| `{name}` |" in table, f"{name} is not in the README's errors table"
            builtin = next((b.__name__ for b in obj.__mro__[1:] if b.__module__ == "builtins" and b is not Exception), None)
            if builtin and builtin not in ("BaseException", "object"):
                assert re.search(rf"\| `{name}` \| `{builtin}` \|", table), f"{name} is also a {builtin}"
