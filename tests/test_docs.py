"""The documentation points at things that exist.

* every recipe folder has a ``README.md``;
* every repository path a README names (``recipes/...``, ``hparams/...``, a bare
  ``*.yaml`` hparams file, ``python -m ser_modules.<module>``,
  ``from ser_modules.<module> import <name>``, a relative Markdown link) exists, with brace
  lists (``{superb,ffn}_ssl.yaml``) and ``*`` patterns expanded; the hparams names of an
  earlier layout may appear only in a section whose heading says "Migration";
* no file of the repository cites the project's private shared folder or a ``*_spec.md``
  that is not in the repository (what code and docs cite must ship with them).
"""

import ast
import functools
import glob
import itertools
import os
import re

import pytest
from prepare_helpers import REPO_ROOT

# Folders that are not part of the repository's content.
SKIPPED_FOLDERS = {
    ".git",
    ".venv",
    "results",
    "runs",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
}
# Files a README may name that are written by a run, not shipped (model folders, checkpoints).
RUN_OUTPUT_YAML = {"hyperparams.yaml", "CKPT.yaml"}
REPOSITORY_ROOTS = (
    "recipes",
    "hparams",
    "ser_modules",
    "benchmarks",
    "scripts",
    "tests",
)
PATH_TOKEN = re.compile(
    r"(?<![\w./<>$-])((?:%s)/[^\s`'\"()\[\]|;]+)" % "|".join(REPOSITORY_ROOTS)
)
BARE_YAML = re.compile(r"(?<![\w./{},*<>-])([\w{},*-]+\.yaml)\b")
MODULE_RUN = re.compile(r"python -m (ser_modules(?:\.\w+)+)")
MODULE_IMPORT = re.compile(r"from (ser_modules(?:\.\w+)*) import ([\w, ]+)")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def repository_files():
    """Every file of the working tree but the skipped folders."""
    for folder, subfolders, files in os.walk(REPO_ROOT):
        subfolders[:] = sorted(
            name for name in subfolders if name not in SKIPPED_FOLDERS
        )
        for name in sorted(files):
            yield os.path.join(folder, name)


def readme_files():
    return [
        path
        for path in repository_files()
        if os.path.basename(path) == "README.md"
    ]


def read_text(path):
    """A file's text, or None for binary or very large files."""
    if os.path.getsize(path) > 4_000_000:
        return None
    with open(path, "rb") as handle:
        data = handle.read()
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace")


def without_migration_sections(text):
    """The Markdown text without the sections whose heading names a migration."""
    kept, skipping_level = [], None
    in_code = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        heading = None if in_code else HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            if skipping_level is not None and level <= skipping_level:
                skipping_level = None
            if (
                skipping_level is None
                and "migration" in heading.group(2).lower()
            ):
                skipping_level = level
        if skipping_level is None:
            kept.append(line)
    return "\n".join(kept)


def expand_braces(pattern):
    """``a{b,c}d{e,f}`` -> ``[abde, abdf, acde, acdf]`` (no nesting)."""
    parts = re.split(r"\{([^{}]*)\}", pattern)
    choices = [
        [part] if index % 2 == 0 else part.split(",")
        for index, part in enumerate(parts)
    ]
    return ["".join(combination) for combination in itertools.product(*choices)]


def missing(pattern, folder=REPO_ROOT):
    """The expansions of ``pattern`` (braces, ``*``) that match nothing under ``folder``."""
    absent = []
    for path in expand_braces(pattern):
        full = os.path.normpath(os.path.join(folder, path))
        if not (glob.glob(full) if "*" in path else os.path.exists(full)):
            absent.append(path)
    return absent


def named_paths(text):
    """Repository paths named in a README's text, root-relative."""
    for match in PATH_TOKEN.finditer(text):
        token = match.group(1).rstrip(".:,")
        if "<" in token or "..." in token or token.endswith("/"):
            continue  # a placeholder (recipes/<DATASET>/train.py) or a folder prefix
        # A brace list may be cut at its commas by the token pattern: keep it whole.
        if token.count("{") != token.count("}"):
            continue
        yield token


def module_file(module):
    """The source file of a ``ser_modules`` module, or None."""
    base = os.path.join(REPO_ROOT, *module.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def top_level_names(path):
    """Names a module defines or imports at its top level."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(
                (alias.asname or alias.name).split(".")[0]
                for alias in node.names
            )
        elif isinstance(node, ast.Assign):
            names.update(
                target.id
                for target in node.targets
                if isinstance(target, ast.Name)
            )
    return names


def broken_references(readme):
    """``(what, reference)`` for every reference of ``readme`` that resolves to nothing."""
    with open(readme, encoding="utf-8") as handle:
        text = without_migration_sections(handle.read())
    problems = []
    for token in named_paths(text):
        token, _, test_name = token.partition("::")
        problems += [("path", path) for path in missing(token)]
        file = os.path.join(REPO_ROOT, token)
        if test_name and os.path.isfile(file):
            if test_name.split("::")[0] not in top_level_names(file):
                problems.append(("test", f"{token}::{test_name}"))
    for match in BARE_YAML.finditer(text):
        name = match.group(1)
        if name not in RUN_OUTPUT_YAML:
            problems += [
                ("hparams file", path)
                for path in missing(name, os.path.join(REPO_ROOT, "hparams"))
            ]
    for match in MODULE_RUN.finditer(text):
        if module_file(match.group(1)) is None:
            problems.append(("module", match.group(1)))
    for match in MODULE_IMPORT.finditer(text):
        path = module_file(match.group(1))
        if path is None:
            problems.append(("module", match.group(1)))
            continue
        defined = top_level_names(path)
        for name in match.group(2).split(","):
            if name.strip() and name.strip() not in defined:
                problems.append(("name", f"{match.group(1)}.{name.strip()}"))
    folder = os.path.dirname(readme)
    for match in MARKDOWN_LINK.finditer(text):
        target = match.group(1).split("#", 1)[0]
        if not target or re.match(r"^[a-z]+:", target):
            continue  # an anchor in the same file or a URL
        problems += [("link", path) for path in missing(target, folder)]
    return sorted(set(problems))


def test_every_recipe_folder_has_a_readme():
    recipes = os.path.join(REPO_ROOT, "recipes")
    folders = sorted(
        name
        for name in os.listdir(recipes)
        if os.path.isdir(os.path.join(recipes, name))
        and name not in SKIPPED_FOLDERS
    )
    assert folders, "no recipe folder found"
    without = [
        name
        for name in folders
        if not os.path.isfile(os.path.join(recipes, name, "README.md"))
    ]
    assert not without, f"recipe folders without a README.md: {without}"


@pytest.mark.parametrize(
    "readme",
    [os.path.relpath(path, REPO_ROOT) for path in readme_files()],
)
def test_every_reference_of_a_readme_exists(readme):
    problems = broken_references(os.path.join(REPO_ROOT, readme))
    assert not problems, (
        f"{readme} names what the repository does not hold (old hparams names belong "
        f"in a 'Migration' section only): {problems}"
    )


def test_the_reference_check_finds_a_missing_file_and_skips_migration_notes(
    tmp_path,
):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Recipe\n\n"
        "```bash\npython recipes/IEMOCAP/train.py hparams/{superb,ffn}_nope.yaml\n```\n"
        "Also `old_name.yaml` and [a link](missing.md).\n\n"
        "## Migration from the old names\n\n"
        "`superb_gone.yaml` is now `hparams/superb_gone2.yaml`.\n\n"
        "## After\n\nSee recipes/IEMOCAP/train.py and hparams/svm_egemaps.yaml.\n",
        encoding="utf-8",
    )
    assert broken_references(str(readme)) == [
        ("hparams file", "old_name.yaml"),
        ("link", "missing.md"),
        ("path", "hparams/ffn_nope.yaml"),
        ("path", "hparams/superb_nope.yaml"),
    ]


# Built from parts so that this file does not match its own patterns.
SHARED_FOLDER = re.compile("(?<![\\w.])" + "shared" + "/")
SPEC_FILE = re.compile(r"\b([\w-]+" + "_spec" + r"\.md)\b")


def test_no_file_cites_what_the_repository_does_not_hold():
    present = {
        os.path.basename(path)
        for path in repository_files()
        if path.endswith(".md")
    }
    citations = []
    for path in repository_files():
        text = read_text(path)
        if text is None:
            continue
        relative = os.path.relpath(path, REPO_ROOT)
        for number, line in enumerate(text.splitlines(), 1):
            if SHARED_FOLDER.search(line):
                citations.append(f"{relative}:{number}: {line.strip()}")
            for name in SPEC_FILE.findall(line):
                if name not in present:
                    citations.append(f"{relative}:{number}: {name}")
    assert not citations, (
        "files cite documents that are not in the repository (bring what they need into "
        f"the recipe's README and cite that): {citations}"
    )


# ---------------------------------------------------------------------------------------
# Command-line options named in the READMEs
# ---------------------------------------------------------------------------------------

OPTION = re.compile(r"(?<![\w-])--([A-Za-z_][\w-]*)")
CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_]\w*)\s*:", re.MULTILINE)
# torchrun's own options, written before the script.
LAUNCHER_OPTIONS = {"standalone", "nproc_per_node", "nnodes", "node_rank"}
# Options of other people's code that a README quotes (the Shiftformer authors' script).
QUOTED_FOREIGN_OPTIONS = {"ndiv", "bidirectional", "shift"}
# Preparation options renamed on a recipe's command line (ser_modules.recipe).
RENAMED_ON_RECIPES = {"seed": "split_seed"}


def hparams_keys(path):
    with open(path, encoding="utf-8") as handle:
        return set(TOP_LEVEL_KEY.findall(handle.read()))


def prepare_function_options(path):
    """Parameters of the ``prepare_*`` functions of one Python file."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    return {
        argument.arg
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and node.name.startswith("prepare_")
        for argument in node.args.args
    }


def preparation_options(recipe_folder):
    """Parameters of the ``prepare_*`` functions of a recipe folder's ``*_prepare.py``."""
    names = set()
    for path in glob.glob(os.path.join(recipe_folder, "*_prepare.py")):
        names |= prepare_function_options(path)
    return names


def is_preparation_script(path):
    """A script whose command line is its ``prepare_*`` function's (``preparation_cli``)."""
    with open(path, encoding="utf-8") as handle:
        return "preparation_cli(prepare_" in handle.read()


def argparse_options(path):
    """``--name`` strings of a Python file (its argparse options)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    return {
        node.value[2:]
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"--[A-Za-z_][\w-]*", node.value)
    }


@functools.lru_cache(maxsize=1)
def speechbrain_run_options():
    import speechbrain as sb

    return set(sb.core.RunOptions().as_dict())


def commands(text):
    """Shell command lines of the code blocks (continuations joined, comments cut)."""
    for block in CODE_BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("#"):
                continue
            if "python " in line or line.startswith("torchrun "):
                yield line


def options_a_command_accepts(tokens):
    """What the script or module of a command line accepts, or None if it is not ours."""
    for index, token in enumerate(tokens):
        if token == "-m" and index + 1 < len(tokens):
            module = module_file(tokens[index + 1])
            if module is None:
                return None, index
            if os.path.basename(module) == "__init__.py":
                # A package runs its __main__.py, which may parse in any of its modules.
                options = set()
                for path in glob.glob(
                    os.path.join(os.path.dirname(module), "*.py")
                ):
                    options |= argparse_options(path)
                return options, index + 1
            return argparse_options(module), index + 1
        if re.fullmatch(r"recipes/[^/]+/\w+\.py", token):
            script = os.path.join(REPO_ROOT, token)
            if not os.path.isfile(script):
                return None, index
            folder = os.path.dirname(script)
            preparation = preparation_options(folder)
            if token.endswith("_prepare.py"):
                return preparation, index
            if is_preparation_script(script):
                return prepare_function_options(script), index
            accepted = {RENAMED_ON_RECIPES.get(n, n) for n in preparation}
            accepted |= speechbrain_run_options() | argparse_options(script)
            with open(script, encoding="utf-8") as handle:
                for module in re.findall(
                    r"from (ser_modules[\w.]*) import", handle.read()
                ):
                    accepted |= argparse_options(module_file(module))
            hparams = [
                path
                for other in tokens[index + 1 :]
                if other.startswith("hparams/")
                for path in expand_braces(other)
            ]
            for path in hparams:
                full = os.path.join(REPO_ROOT, path)
                if not os.path.isfile(full):
                    return None, index  # reported by the reference test
                accepted |= hparams_keys(full)
            return accepted, index
    return None, len(tokens)


def unknown_command_options(readme):
    """``(command, option)`` for every option a README's command gives that its script,
    hparams file, preparation and SpeechBrain do not know."""
    with open(readme, encoding="utf-8") as handle:
        text = without_migration_sections(handle.read())
    unknown = []
    for line in commands(text):
        tokens = line.replace("[", " ").replace("]", " ").split()
        accepted, start = options_a_command_accepts(tokens)
        if accepted is None:
            continue
        for token in tokens[start + 1 :]:
            match = OPTION.match(token)
            if match and match.group(1) not in accepted:
                unknown.append((line[:60], "--" + match.group(1)))
    return unknown


@pytest.mark.parametrize(
    "readme",
    [os.path.relpath(path, REPO_ROOT) for path in readme_files()],
)
def test_every_option_of_a_readme_command_is_accepted_by_its_script(readme):
    unknown = unknown_command_options(os.path.join(REPO_ROOT, readme))
    assert not unknown, (
        f"{readme}: options that the script, its hparams file, its preparation and "
        f"SpeechBrain do not accept: {unknown}"
    )


def test_the_option_check_names_an_option_nobody_accepts(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "```bash\n"
        "python recipes/IEMOCAP/train.py hparams/superb_fbank.yaml \\\n"
        "    --data_folder=/x --protocol=speaker --split_seed=3 --precision=bf16 \\\n"
        "    --number_of_epochs=3 --number_of_epoch=3\n"
        "python recipes/MELD/meld_prepare.py --data_folder=/x --split=speaker\n"
        "python -m ser_modules.infer model clip.wav --output p.json --outptu q\n"
        "```\n",
        encoding="utf-8",
    )
    assert [option for _, option in unknown_command_options(str(readme))] == [
        "--number_of_epoch",
        "--split",
        "--outptu",
    ]


@functools.lru_cache(maxsize=1)
def options_anything_accepts():
    """Every option some script, hparams file, preparation or SpeechBrain accepts."""
    accepted = set(LAUNCHER_OPTIONS | QUOTED_FOREIGN_OPTIONS)
    accepted |= speechbrain_run_options()
    for path in glob.glob(os.path.join(REPO_ROOT, "hparams", "*.yaml")):
        accepted |= hparams_keys(path)
    for folder in glob.glob(os.path.join(REPO_ROOT, "recipes", "*")):
        preparation = preparation_options(folder)
        accepted |= preparation | {
            RENAMED_ON_RECIPES.get(n, n) for n in preparation
        }
    for root in ("ser_modules", "recipes", "benchmarks", "scripts"):
        for path in glob.glob(
            os.path.join(REPO_ROOT, root, "**", "*.py"), recursive=True
        ):
            accepted |= argparse_options(path)
            if is_preparation_script(path):
                accepted |= prepare_function_options(path)
    return accepted


@pytest.mark.parametrize(
    "readme",
    [os.path.relpath(path, REPO_ROOT) for path in readme_files()],
)
def test_every_option_a_readme_names_exists_somewhere(readme):
    """Options in prose (``--fold=2``, ``--skip_prep=True``) are not tied to one command;
    each must at least be accepted by some script, hparams file or preparation."""
    with open(os.path.join(REPO_ROOT, readme), encoding="utf-8") as handle:
        text = without_migration_sections(handle.read())
    unknown = sorted(set(OPTION.findall(text)) - options_anything_accepts())
    assert not unknown, f"{readme} names options nothing accepts: {unknown}"
