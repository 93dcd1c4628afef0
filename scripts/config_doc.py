"""Write docs/configuration.md from the config dataclasses and the environment the code reads.

    .venv/bin/python scripts/config_doc.py            # rewrite docs/configuration.md
    .venv/bin/python scripts/config_doc.py --check    # exit 1 if it is out of date

Settings: every field of `ObjectCacheConfig` and its nested tables (`sglang_objectcache/config.py`),
with its type, its default, the environment variable that sets it where the config does not
(`config_parse.env_overlay`), and its description, which is the comment above the field and the
comment on its line. A field with no comment gets an empty description, so give it one in
config.py. Environment variables: every `os.environ` / `os.getenv` read under
`sglang_objectcache/`, `kernels/` and `objectcache_dev/`, found in the source (names, defaults, files);
what each one does is written in ENV below, and the script refuses to run while a variable
read in the code has no entry there, or an entry names a variable no code reads.
tests/test_docs.py checks that the committed file is what this writes.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import sys
import tokenize
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "configuration.md"
CONFIG = ROOT / "sglang_objectcache" / "config.py"
SOURCES = (ROOT / "sglang_objectcache", ROOT / "kernels", ROOT / "objectcache_dev")

# What each environment variable does. The names, defaults and files come from the code.
# objectcache's own settings are config fields (the settings tables above), each of which
# the environment can also set; this lists what the code reads from the environment itself.
ENV = {
    "AWS_ACCESS_KEY_ID": "Static key of the AWS chain. Where the config names no key, objectcache's own "
                         "HTTP clients sign with it (as obstore and boto3 do).",
    "AWS_SECRET_ACCESS_KEY": "Goes with `AWS_ACCESS_KEY_ID`.",
    "AWS_SESSION_TOKEN": "Set: temporary credentials; objectcache's own HTTP clients then leave the "
                         "keys to obstore/boto3.",
    "AWS_SHARED_CREDENTIALS_FILE": "Where neither the config nor the environment gives a key, objectcache's "
                                   "own HTTP clients read static keys from this file, as boto3's chain does.",
    "AWS_PROFILE": "The profile read from that credentials file.",
    "TRITON_INTERPRET": "`1` lets the Triton kernels run on CPU tensors in Triton's interpreter (tests).",
    "PROMETHEUS_MULTIPROC_DIR": "Set by SGLang with `--enable-metrics`; without it no metrics exporter starts.",
    "OBJECTCACHE_SERVER_URL": "`objectcache-inspect tree`: the server's URL (`--url`).",
    "OBJECTCACHE_API_KEY": "`objectcache-inspect tree`: the server's admin API key (`--api-key`).",
    "SGLANG_USE_CPU_ENGINE": "SGLang's own switch to its CPU engine; `1` (and no CUDA device) makes the "
                             "plugin apply the CPU-engine shims (`sglang/cpu/compat.py`, docs/cpu.md).",
    "OBJECTCACHE_TINY_MODEL_DIR": "Test fixtures (`harness/fixtures.py`): reuse this tiny-model directory.",
    "OBJECTCACHE_E2E_LOG_DIR": "Test fixtures: keep the SGLang server logs of end-to-end tests here.",
}


# ---- settings ----------------------------------------------------------------------------

def comments(path: Path) -> dict[int, str]:
    """Line number -> the text of the comment on that line."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def field_docs(path: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(class, field) -> (annotation, description) for every annotated field of every class."""
    src = path.read_text()
    lines = src.splitlines()
    notes = comments(path)
    out = {}
    for cls in ast.parse(src).body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for stmt in cls.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above = []
            n = stmt.lineno - 1
            while n >= 1 and lines[n - 1].strip().startswith("#"):
                above.insert(0, notes[n])
                n -= 1
            inline = [notes[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in notes]
            out[(cls.name, stmt.target.id)] = (ast.unparse(stmt.annotation), " ".join(above + inline))
    return out


def default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()


def show_default(value) -> str:
    if dataclasses.is_dataclass(value):
        return f"see [`{f_table_name(value)}`](#{f_table_name(value)})"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else "empty"
    if isinstance(value, dict) or hasattr(value, "keys"):
        return "`{}`" if not value else f"`{dict(value)}`"
    return f"`{value!r}`"


_TABLES: dict[type, str] = {}


def f_table_name(value) -> str:
    return _TABLES[type(value)]


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _load(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def load_config():
    """config.py of this checkout, read from its file (the venv's install may be another
    checkout's). It imports nothing but the standard library and config_parse.py, which is
    read from its file too and stands in for the package's while config.py loads."""
    if "objectcache_config_doc" not in sys.modules:
        name = "sglang_objectcache.config_parse"
        installed = sys.modules.get(name)
        parse = _load("objectcache_config_doc_parse", CONFIG.with_name("config_parse.py"))
        sys.modules[name] = parse
        try:
            _load("objectcache_config_doc", CONFIG).config_parse = parse
        finally:
            if installed is None:
                del sys.modules[name]
            else:
                sys.modules[name] = installed
    return sys.modules["objectcache_config_doc"]


def settings_tables() -> list[str]:
    config = load_config()
    docs = field_docs(CONFIG)
    top = config.ObjectCacheConfig
    nested = [(f.name, type(default_of(f))) for f in dataclasses.fields(top) if dataclasses.is_dataclass(default_of(f))]
    for name, cls in nested:
        _TABLES[cls] = name
    out = []
    missing = []
    env_name = config.config_parse.env_name
    for title, prefix, cls in [("Top level", "", top)] + [(f"`{n}`", n + ".", c) for n, c in nested]:
        anchor = prefix.rstrip(".") or "top-level"
        out += [f'<a id="{anchor}"></a>', "", f"### {title}", "",
                "| key | type | default | environment | what it does |", "|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            annotation, text = docs[(cls.__name__, f.name)]
            if not text:
                missing.append(f"{cls.__name__}.{f.name}")
            env = "" if dataclasses.is_dataclass(default_of(f)) else f"`{env_name(prefix + f.name)}`"
            out.append(f"| `{prefix}{f.name}` | `{cell(annotation)}` | {cell(show_default(default_of(f)))} | "
                       f"{env} | {cell(text)} |")
        out.append("")
    if missing:
        print(f"config_doc: fields with no comment in config.py (add one): {', '.join(missing)}", file=sys.stderr)
    return out


# ---- environment -------------------------------------------------------------------------

def _is_environ(node) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name)
            and node.value.id == "os")


def _env_reads(tree: ast.Module):
    """(name expression, default expression or None) for every read of the environment."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == "get" and _is_environ(f.value)) or \
                    (isinstance(f, ast.Attribute) and f.attr == "getenv" and isinstance(f.value, ast.Name)
                     and f.value.id == "os"):
                yield node.args[0], (node.args[1] if len(node.args) > 1 else None)
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            yield node.slice, None
        elif isinstance(node, ast.Compare) and len(node.comparators) == 1 and _is_environ(node.comparators[0]) \
                and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            yield node.left, None


def _names(expr, consts: dict[str, str], parents: dict) -> list[str]:
    """The variable names an expression can be: a string, a module constant, or
    "PREFIX_" + key.upper() inside `for key in ("a", "b", ...)`."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr.value]
    if isinstance(expr, ast.Name) and expr.id in consts:
        return [consts[expr.id]]
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add) and isinstance(expr.left, ast.Constant) \
            and isinstance(expr.right, ast.Call) and isinstance(expr.right.func, ast.Attribute) \
            and expr.right.func.attr == "upper" and isinstance(expr.right.func.value, ast.Name):
        var, node = expr.right.func.value.id, parents.get(expr)
        while node is not None:
            if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and node.target.id == var:
                if isinstance(node.iter, ast.Tuple) and all(
                        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.iter.elts):
                    return [expr.left.value + e.value.upper() for e in node.iter.elts]
                return []
            node = parents.get(node)
    return []


def env_table() -> list[str]:
    found: dict[str, set[str]] = defaultdict(set)
    defaults: dict[str, set[str]] = defaultdict(set)
    unresolved = []
    for base in SOURCES:
        for path in sorted(base.rglob("*.py")):
            tree = ast.parse(path.read_text())
            consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                      for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)
                      and isinstance(n.value.value, str)}
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            rel = path.relative_to(ROOT).as_posix()
            for expr, default in _env_reads(tree):
                names = _names(expr, consts, parents)
                if not names:
                    unresolved.append(f"{rel}:{expr.lineno}")
                for name in names:
                    found[name].add(rel)
                    if isinstance(default, ast.Constant) and isinstance(default.value, str):
                        defaults[name].add(default.value)
    undocumented = sorted(set(found) - set(ENV))
    stale = sorted(set(ENV) - set(found))
    if unresolved or undocumented or stale:
        raise SystemExit("config_doc: the ENV table in scripts/config_doc.py is out of step with the code: "
                         + "; ".join(filter(None, [
                             unresolved and f"environment reads whose name is not a literal: {unresolved}",
                             undocumented and f"read in the code but not in ENV: {undocumented}",
                             stale and f"in ENV but read nowhere: {stale}"])))
    out = ["| variable | default | read in | what it does |", "|---|---|---|---|"]
    for name in ENV:  # ENV's order: grouped by concern
        shown = " / ".join(f"`{d}`" if d else "empty" for d in sorted(defaults[name])) or "unset"
        files = "<br>".join(f"`{f}`" for f in sorted(found[name]))
        out.append(f"| `{name}` | {shown} | {files} | {cell(ENV[name])} |")
    return out


# ---- the page ----------------------------------------------------------------------------

def render() -> str:
    config = load_config()

    removed = "; ".join(f"`{k}` ({v})" for k, v in sorted(config.REMOVED.items()))
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by scripts/config_doc.py from sglang_objectcache/config.py and the code's",
        "     environment reads. Do not edit: change the comments in config.py, or ENV in the script,",
        "     then run `.venv/bin/python scripts/config_doc.py`. tests/test_docs.py checks it. -->",
        "",
        "objectcache reads one frozen dataclass, `ObjectCacheConfig` (`sglang_objectcache/config.py`),",
        "from SGLang's `--hicache-storage-backend-extra-config`: inline JSON, or `@path` to a `.json`,",
        "`.toml` or `.yaml` file (`configs/` has examples for SeaweedFS, AWS S3, S3 Express One Zone,",
        "Ceph RGW and MinIO). `objectcache-inspect`'s `--config` takes the same. Nested tables",
        "(`layerwise`, `scheduler`) are JSON objects or TOML tables.",
        "",
        "- A bad value, an unknown key or a missing `bucket` stops the server at startup with one",
        "  line that starts with the key's name.",
        "- Keys SGLang itself leaves in the dict are ignored: "
        + ", ".join(f"`{k}`" for k in sorted(config.SGLANG_KEYS)) + ".",
        f"- Removed keys are refused with the reason: {removed}.",
        f"- One call to the store, retries included, may last at most {config.SLOW_STORE_S:g} s"
        " (`min(request_deadline_s, (retries + 1) x (connect_timeout_s + read_timeout_s))`), inside",
        "  SGLang's 10 s storage-thread join; more is refused unless `allow_slow_store` is set.",
        "- Credentials: prefer the AWS chain (environment, `~/.aws`, instance role) or an `@file`",
        "  config. SGLang logs its flags and shows them in `/server_info`, so keys in inline JSON",
        "  would leak there; objectcache never logs them.",
        "- Every setting can also come from the environment: `OBJECTCACHE_<KEY>` for a top-level",
        "  key, `OBJECTCACHE_<TABLE>_<KEY>` for a key of a table (`OBJECTCACHE_LAYERWISE_TRACE_PATH`),",
        "  in upper case (the tables below name each one). The config wins: a variable applies only",
        "  where the config does not set that key, so one config file can serve many hosts. An empty",
        "  variable is unset; booleans take `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`, tables",
        "  (`nixl_plugin_params`) a JSON object. A bad value is refused naming the key and the variable.",
        "- Every process that needs a setting reads the same flag: the backend and the metrics",
        "  exporter in SGLang's scheduler process, the tree endpoint in SGLang's HTTP process (it",
        "  parses `--hicache-storage-backend-extra-config` from the server arguments); the layerwise",
        "  fetch worker process gets its settings from its parent, pickled in its first message. An",
        "  `OBJECTCACHE_*` variable reaches them all, as SGLang's processes inherit its environment.",
        "",
        "## Settings",
        "",
    ]
    lines += settings_tables()
    lines += [
        "## Environment variables",
        "",
        "Read by the code under `sglang_objectcache/`, `kernels/` and `objectcache_dev/` itself (found by",
        "`scripts/config_doc.py`), besides the `OBJECTCACHE_<KEY>` variables of the settings above.",
        "boto3 and obstore read the rest of the AWS chain themselves (`AWS_REGION`, `AWS_CONFIG_FILE`, ...).",
        "",
    ]
    lines += env_table()
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is out of date")
    args = p.parse_args()
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run .venv/bin/python scripts/config_doc.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
