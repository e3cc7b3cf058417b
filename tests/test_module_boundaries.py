"""Boundaries between the project's modules, read from the source with ``ast`` (nothing
is imported, so a lazy import inside a function counts as much as one at the top).

- The Vesper package (``ser_modules/vesper/``) is pretraining and export of an encoder: it
  must not pull in the emotion recipes' Brain (``ser_modules.training``) nor the feature
  cache (``ser_modules.feature_cache``), directly or through any module of
  ``ser_modules`` it imports. Importing ``a.b.c`` runs ``a/__init__.py`` and
  ``a/b/__init__.py`` too, so those count as imported.
- No module imports a private name (``_name``) of another module: a name shared between
  modules is public, with a docstring. This holds for ``ser_modules``, ``recipes``,
  ``scripts``, ``benchmarks`` and ``tests`` alike: tests specify the public behaviour, so
  they import public names only. Private names of third-party packages are refused as
  well, except those listed in :data:`THIRD_PARTY_PRIVATE_IMPORTS` with the reason.
  HyperPyYAML files import what their tags name, so no ``!new:`` / ``!name:`` /
  ``!apply:`` tag of an hparams file names a private name either.
"""

import ast
import pathlib
import re

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "ser_modules"
SCANNED_FOLDERS = ("ser_modules", "recipes", "scripts", "benchmarks", "tests")
# HyperPyYAML tags import what they name, so hparams files are held to the same rule.
YAML_FOLDERS = ("hparams", "recipes")
YAML_TAG = re.compile(r"!(?:new|name|apply|module):([\w.]+)")
VESPER_PACKAGE = "ser_modules.vesper"
KEPT_OUT_OF_VESPER = ("ser_modules.training", "ser_modules.feature_cache")
# (module, name) -> why the private name is imported anyway.
THIRD_PARTY_PRIVATE_IMPORTS = {
    (
        "transformers.models.wav2vec2.modeling_wav2vec2",
        "_compute_mask_indices",
    ): "Shiftformer's SpecAugment draws its spans with the function the ShiftSER "
    "authors call, so the masks follow the reference code (transformers is pinned).",
}


def is_private(name):
    """``_name`` but not ``__dunder__``."""
    return name.startswith("_") and not name.endswith("__")


def module_name(path, root):
    """Dotted module name of a source file (a package's ``__init__.py``: the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root=REPO_ROOT):
    """``{dotted name: path}`` of every module of the ``ser_modules`` package."""
    return {
        module_name(path, root): path
        for path in sorted((root / PACKAGE).rglob("*.py"))
    }


def absolute_module(node, importer, is_package):
    """The module an ``ImportFrom`` node reads from, relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = importer if is_package else importer.rpartition(".")[0]
    base = package.split(".")
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_targets(tree, importer, is_package):
    """Every dotted name a module imports, at any depth of its source.

    ``from a.b import c`` yields ``a.b`` and ``a.b.c`` (``c`` may be a module).
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            module = absolute_module(node, importer, is_package)
            yield module
            for alias in node.names:
                yield f"{module}.{alias.name}"


def project_imports(name, modules):
    """The ``ser_modules`` modules that importing ``name`` runs directly, parent packages
    of each imported module included."""
    path = modules[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for target in imported_targets(tree, name, path.name == "__init__.py"):
        parts = target.split(".")
        for end in range(1, len(parts) + 1):
            prefix = ".".join(parts[:end])
            if prefix in modules and prefix != name:
                found.add(prefix)
    return found


def import_closure(start, modules):
    """``{module: the module that imports it}`` of everything importing ``start`` runs."""
    importer_of = {name: None for name in start}
    pending = list(start)
    while pending:
        name = pending.pop()
        for imported in sorted(project_imports(name, modules)):
            if imported not in importer_of:
                importer_of[imported] = name
                pending.append(imported)
    return importer_of


def import_chain(module, importer_of):
    """``vesper.x -> a -> b -> module``: how ``module`` is reached."""
    chain = [module]
    while importer_of[chain[-1]] is not None:
        chain.append(importer_of[chain[-1]])
    return " -> ".join(reversed(chain))


def private_imports(path, root=REPO_ROOT, modules=None):
    """``(line, text)`` of each private name ``path`` imports from another module.

    Counts ``from m import _x``, ``import m._x`` / ``from m._x import y`` (a private
    module), and ``m._x`` where ``m`` is a ``ser_modules`` module bound by an import.
    """
    modules = project_modules(root) if modules is None else modules
    name = module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found, bound_modules = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if any(is_private(part) for part in alias.name.split(".")):
                    found.append((node.lineno, f"import {alias.name}"))
                if alias.asname:
                    bound_modules[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    bound_modules[top] = top
        elif isinstance(node, ast.ImportFrom):
            module = absolute_module(node, name, is_package)
            if any(is_private(part) for part in module.split(".")):
                found.append((node.lineno, f"from {module} import ..."))
            for alias in node.names:
                exempt = (module, alias.name) in THIRD_PARTY_PRIVATE_IMPORTS
                if is_private(alias.name) and not exempt:
                    found.append(
                        (node.lineno, f"from {module} import {alias.name}")
                    )
                bound_modules[alias.asname or alias.name] = (
                    f"{module}.{alias.name}"
                )
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            target = dotted_name(node.value, bound_modules)
            if target in modules and target != name:
                found.append((node.lineno, f"{target}.{node.attr}"))
    return sorted(found)


def dotted_name(node, bound_modules):
    """``a.b.c`` of an expression ``x.b.c`` whose ``x`` an import bound to ``a``, else None."""
    attributes = []
    while isinstance(node, ast.Attribute):
        attributes.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in bound_modules:
        return None
    return ".".join([bound_modules[node.id], *reversed(attributes)])


def scanned_files(root=REPO_ROOT):
    return [
        path
        for folder in SCANNED_FOLDERS
        for path in sorted((root / folder).rglob("*.py"))
    ]


def test_the_vesper_package_imports_neither_training_nor_the_feature_cache():
    modules = project_modules()
    vesper = [name for name in modules if name.startswith(VESPER_PACKAGE)]
    assert f"{VESPER_PACKAGE}.pretraining" in vesper
    importer_of = import_closure(vesper, modules)
    # The walk sees through packages: the upstreams the encoder reads are reached.
    assert "ser_modules.upstreams.huggingface" in importer_of
    reached = [
        import_chain(module, importer_of)
        for module in KEPT_OUT_OF_VESPER
        if module in importer_of
    ]
    assert reached == [], (
        "ser_modules/vesper/ must not import these (directly or through another "
        "module): " + "; ".join(reached)
    )


def test_no_module_imports_a_private_name_of_another():
    modules = project_modules()
    violations = [
        f"{path.relative_to(REPO_ROOT)}:{line}: {text}"
        for path in scanned_files()
        for line, text in private_imports(path, modules=modules)
    ]
    assert violations == [], (
        "Private names imported across modules (make the name public with a "
        "docstring, or move the code):\n" + "\n".join(violations)
    )


def test_no_hparams_file_names_a_private_name():
    violations = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {target}"
        for folder in YAML_FOLDERS
        for path in sorted((REPO_ROOT / folder).rglob("*.yaml"))
        for number, line in enumerate(
            path.read_text(encoding="utf-8").splitlines(), start=1
        )
        for target in YAML_TAG.findall(line)
        if any(is_private(part) for part in target.split("."))
    ]
    assert violations == [], "\n".join(violations)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from ser_modules.manifest import _parse_value\n", 1),
        ("import ser_modules.manifest as m\nm._parse_value('1', 0)\n", 1),
        ("from ser_modules import manifest\nmanifest._parse_value\n", 1),
        ("import ser_modules.manifest\nser_modules.manifest._parse_value\n", 1),
        ("from . import _helper\n", 1),
        ("from ser_modules.manifest import read_csv, __doc__\n", 0),
        (
            "from transformers.models.wav2vec2.modeling_wav2vec2 import "
            "_compute_mask_indices\n",
            0,
        ),
        ("from transformers.models.bert.modeling_bert import _private\n", 1),
        ("import torch\ntorch.ops.mkldnn._linear_pointwise\n", 0),
    ],
)
def test_the_private_name_scan_sees_each_form_of_import(
    tmp_path, source, expected
):
    # A scan that missed a form would let the rule above pass without checking it.
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "manifest.py").write_text("def _parse_value(): ...\n")
    path = package / "user.py"
    path.write_text(source)
    assert len(private_imports(path, root=tmp_path)) == expected


def test_the_import_walk_follows_parent_packages_and_lazy_imports(tmp_path):
    package = tmp_path / PACKAGE
    (package / "vesper").mkdir(parents=True)
    (package / "upstreams").mkdir()
    (package / "__init__.py").write_text("")
    (package / "vesper" / "__init__.py").write_text("")
    (package / "vesper" / "pretraining.py").write_text(
        "def brain():\n    from ser_modules.upstreams.base import x\n"
    )
    (package / "upstreams" / "__init__.py").write_text(
        "from ser_modules.upstreams.helpers import y\n"
    )
    (package / "upstreams" / "base.py").write_text("")
    (package / "upstreams" / "helpers.py").write_text(
        "import ser_modules.training\n"
    )
    (package / "training.py").write_text("")
    modules = project_modules(tmp_path)
    importer_of = import_closure(["ser_modules.vesper.pretraining"], modules)
    assert import_chain("ser_modules.training", importer_of) == (
        "ser_modules.vesper.pretraining -> ser_modules.upstreams -> "
        "ser_modules.upstreams.helpers -> ser_modules.training"
    )
