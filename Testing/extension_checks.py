"""Checks for the classic mistakes of a Slicer scripted-module extension, as functions over any folder.

Each check returns a list of problems, one sentence each, and an empty list when all is well. Tests assert
`== []` on the real tree (pytest then prints what is wrong), and run the same checks on broken temporary
copies to show that they fail.
"""

from __future__ import annotations

import ast
import re
import typing
import xml.etree.ElementTree as ElementTree
from pathlib import Path

# --- CMake --------------------------------------------------------------------------------------------------

_CMAKE_TOKEN = re.compile(r'#[^\n]*|"(?:[^"\\]|\\.)*"|[()]|[^\s()#"]+')
_VARIABLE = re.compile(r"\$\{(\w+)\}")
# Keyword arguments of slicerMacroBuildScriptedModule (Slicer's CMake/SlicerMacroBuildScriptedModule.cmake).
_MODULE_MACRO_KEYWORDS = {"NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE"}


def cmake_commands(cmake_file: Path) -> list[tuple[str, list[str]]]:
    """(lower-case command name, arguments) of each command in a CMakeLists.txt; `${VAR}` set earlier by
    `set()` is expanded; comments and quotes are removed. Enough CMake for the flat files of an extension.
    """
    commands: list[tuple[str, list[str]]] = []
    variables: dict[str, list[str]] = {}
    name, arguments, depth = "", [], 0
    for token in _CMAKE_TOKEN.findall(cmake_file.read_text()):
        if token.startswith("#"):
            continue
        if token == "(":
            depth += 1
            arguments = [] if depth == 1 else arguments
        elif token == ")":
            depth -= 1
            if depth == 0:
                command = name.lower()
                commands.append((command, arguments))
                if command == "set" and arguments:
                    variables[arguments[0]] = arguments[1:]
        elif depth == 0:
            name = token
        else:
            arguments.extend(_expand(token.strip('"'), variables))
    return commands


def _expand(token: str, variables: dict[str, list[str]]) -> list[str]:
    whole = _VARIABLE.fullmatch(token)
    if whole:
        return list(variables.get(whole.group(1), []))
    return [_VARIABLE.sub(lambda match: " ".join(variables.get(match.group(1), [])), token)]


def scripted_module_files(cmake_file: Path) -> list[str]:
    """The SCRIPTS and RESOURCES given to slicerMacroBuildScriptedModule: the files Slicer installs."""
    files: list[str] = []
    for command, arguments in cmake_commands(cmake_file):
        if command != "slicermacrobuildscriptedmodule":
            continue
        section = None
        for argument in arguments:
            if argument in _MODULE_MACRO_KEYWORDS:
                section = argument
            elif section in ("SCRIPTS", "RESOURCES"):
                files.append(argument)
    return files


def _files_in(folder: Path, pattern: str = "*") -> set[str]:
    """Relative paths of the files in `folder` matching `pattern`, except build litter and CMakeLists.txt."""
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob(pattern)
        if path.is_file()
        and path.name != "CMakeLists.txt"
        and "__pycache__" not in path.parts
        and not path.name.startswith(".")
    }


def _listing_problems(listed: set[str], present: set[str], cmake_file: Path, consequence: str) -> list[str]:
    problems = [f"{name} is listed in {cmake_file} but does not exist." for name in sorted(listed - present)]
    problems += [
        f"{name} is not listed in {cmake_file}, so {consequence}." for name in sorted(present - listed)
    ]
    return problems


def module_file_problems(module_dir: Path) -> list[str]:
    """Every file of the module folder is listed in its CMakeLists.txt (else Slicer does not install it), and
    every listed file exists (else the build fails).
    """
    cmake_file = module_dir / "CMakeLists.txt"
    listed = set(scripted_module_files(cmake_file))
    return _listing_problems(listed, _files_in(module_dir), cmake_file, "Slicer would not install it")


def unittest_registration_problems(tests_dir: Path) -> list[str]:
    """Every Python script of an in-Slicer test folder is registered with slicer_add_python_unittest, and
    every registered script exists.
    """
    cmake_file = tests_dir / "CMakeLists.txt"
    registered = {
        arguments[arguments.index("SCRIPT") + 1]
        for command, arguments in cmake_commands(cmake_file)
        if command == "slicer_add_python_unittest" and "SCRIPT" in arguments
    }
    return _listing_problems(registered, _files_in(tests_dir, "*.py"), cmake_file, "ctest would never run it")


def subdirectory_problems(source_dir: Path) -> list[str]:
    """Each add_subdirectory() of a CMakeLists.txt (recursively) names a folder with a CMakeLists.txt."""
    problems = []
    for command, arguments in cmake_commands(source_dir / "CMakeLists.txt"):
        if command == "add_subdirectory":
            child = source_dir / arguments[0]
            if (child / "CMakeLists.txt").is_file():
                problems += subdirectory_problems(child)
            else:
                problems.append(
                    f"{source_dir / 'CMakeLists.txt'} adds {arguments[0]}, which has no CMakeLists.txt."
                )
    return problems


EXTENSION_METADATA = (
    "EXTENSION_HOMEPAGE",
    "EXTENSION_CATEGORY",
    "EXTENSION_CONTRIBUTORS",
    "EXTENSION_DESCRIPTION",
    "EXTENSION_ICONURL",
    "EXTENSION_SCREENSHOTURLS",
    "EXTENSION_DEPENDS",
)


def extension_metadata(cmake_file: Path) -> dict[str, list[str]]:
    """The values of the EXTENSION_* variables set in a top-level CMakeLists.txt."""
    return {
        arguments[0]: arguments[1:]
        for command, arguments in cmake_commands(cmake_file)
        if command == "set" and arguments and arguments[0].startswith("EXTENSION_")
    }


def extension_metadata_problems(extension_dir: Path) -> list[str]:
    """All metadata the Extensions Index shows is set."""
    metadata = extension_metadata(extension_dir / "CMakeLists.txt")
    return [f"{name} is not set." for name in EXTENSION_METADATA if not "".join(metadata.get(name, []))]


# --- the Extensions Index's rules ---------------------------------------------------------------------------
# Slicer/ExtensionsIndex's scripts/check_description_files.py reads the top-level CMakeLists.txt as text (it
# does not expand CMake variables), fetches the icon and screenshot URLs, checks names, category and licence.
# These checks apply the same rules offline: a URL must be literal and name a file of this repository.

INDEX_CATEGORIES = frozenset(
    {
        "Active Learning", "Analysis", "Cardiac", "Converters", "DICOM", "Developer Tools", "Diffusion",
        "Examples", "Exporter", "Filtering", "IGT", "Image Synthesis", "Informatics", "Neuroimaging",
        "Nuclear Medicine", "Otolaryngology", "Pipelines", "Planning", "Quantification", "Radiotherapy",
        "Registration", "Remote", "Rendering", "Segmentation", "Sequences", "Shape Analysis", "Simulation",
        "Surface Models", "Tomographic Reconstruction", "Tracking", "Tractography", "Training", "Ultrasound",
        "Utilities", "Virtual Reality", "Wizards",
    }
)  # fmt: skip
REPOSITORY_NAME_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")
LICENSE_FILE_NAMES = (
    "LICENSE",
    "LICENCE",
    "License.txt",
    "license.txt",
    "LICENSE.txt",
    "COPYING",
    "COPYING.txt",
)
INDEX_SIZE_LIMIT_MB = 100
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
_LITERAL_SET = r'set\s*\(\s*{name}\s+"([^"]*)"\s*\)'
_GITHUB_REPOSITORY = re.compile(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")
_RAW_FILE = re.compile(r"https://raw\.githubusercontent\.com/([\w.-]+)/([\w.-]+)/[\w.-]+/(.+)$")
# The licence named in the core's pyproject.toml -> a phrase its full text contains.
_LICENSE_PHRASES = {
    "Apache-2.0": "Apache License\n                           Version 2.0",
    "MIT": "MIT License",
}


def _literal(cmake_text: str, name: str) -> str | None:
    """The value of `set(NAME "...")` as the Index reads it: the quoted text, nothing expanded."""
    match = re.search(_LITERAL_SET.format(name=name), cmake_text)
    return match.group(1) if match else None


def _repository_file_problems(
    url: str, variable: str, owner_repo: tuple[str, str] | None, root: Path
) -> list[str]:
    if "${" in url:
        return [
            f"{variable} uses a CMake variable ({url}); the Index reads it literally, so write the URL out."
        ]
    match = _RAW_FILE.match(url)
    if match is None:
        return [
            f"{variable} {url} is not an https://raw.githubusercontent.com/<owner>/<repository>/<branch>/"
            "<path> URL."
        ]
    if owner_repo is not None and (match.group(1), match.group(2)) != owner_repo:
        return [f"{variable} {url} points into another repository than EXTENSION_HOMEPAGE."]
    path = root / match.group(3)
    if not path.is_file():
        return [f"{variable} {url} names {match.group(3)}, which is not in the repository."]
    if not path.read_bytes().startswith(_IMAGE_MAGIC):
        return [f"{variable} {url} names {match.group(3)}, which is not a PNG, JPEG or GIF image."]
    return []


def _tracked_size_mb(root: Path) -> float:
    skipped = {".git", ".venv", "build", "__pycache__", ".pytest_cache", ".ruff_cache"}
    return (
        sum(
            path.stat().st_size
            for path in root.rglob("*")
            if path.is_file() and not skipped & set(path.parts)
        )
        / 2**20
    )


def extensions_index_problems(root: Path, core_license: str) -> list[str]:
    """The Extensions Index's checks on an extension's top-level CMakeLists.txt and repository, offline.

    root: the repository; core_license: the licence the core declares (its pyproject's `license.text`).
    """
    text = (root / "CMakeLists.txt").read_text(encoding="utf-8")
    problems = []
    project = re.search(r"project\s*\(\s*([^\s)]+)", text, re.IGNORECASE)
    name = project.group(1).strip("\"'") if project else None
    if name is None:
        problems.append(
            "The top-level CMakeLists.txt declares no project(): the Index takes the name from it."
        )
    elif name.lower().startswith("slicer"):
        problems.append(f"The extension name {name} starts with 'Slicer'; the Index asks for it without.")
    homepage = _literal(text, "EXTENSION_HOMEPAGE") or ""
    repository = _GITHUB_REPOSITORY.match(homepage)
    if repository is None:
        problems.append(
            f"EXTENSION_HOMEPAGE {homepage!r} is not a literal https://github.com/<owner>/<repository>."
        )
    elif not repository.group(2).startswith(REPOSITORY_NAME_PREFIXES):
        problems.append(
            f"The repository name {repository.group(2)} does not start with 'Slicer', as the Index asks "
            f"(e.g. Slicer{name})."
        )
    category = _literal(text, "EXTENSION_CATEGORY")
    if category not in INDEX_CATEGORIES:
        problems.append(f"EXTENSION_CATEGORY {category!r} is not a category the Index accepts.")
    owner_repo = (repository.group(1), repository.group(2)) if repository else None
    icon = _literal(text, "EXTENSION_ICONURL")
    if icon is None:
        problems.append('No literal set(EXTENSION_ICONURL "...") in the top-level CMakeLists.txt.')
    else:
        problems += _repository_file_problems(icon, "EXTENSION_ICONURL", owner_repo, root)
    screenshots = _literal(text, "EXTENSION_SCREENSHOTURLS")
    if not screenshots:
        problems.append('No literal set(EXTENSION_SCREENSHOTURLS "...") in the top-level CMakeLists.txt.')
    for url in (screenshots or "").split():
        problems += _repository_file_problems(url, "EXTENSION_SCREENSHOTURLS", owner_repo, root)
    license_file = next((root / n for n in LICENSE_FILE_NAMES if (root / n).is_file()), None)
    if license_file is None:
        problems.append("No licence file (LICENSE.txt) in the repository root.")
    elif _LICENSE_PHRASES.get(core_license, core_license) not in license_file.read_text(encoding="utf-8"):
        problems.append(f"{license_file.name} is not the {core_license} licence the core declares.")
    size_mb = _tracked_size_mb(root)
    if size_mb > INDEX_SIZE_LIMIT_MB:
        problems.append(f"The repository holds {size_mb:.0f} MB, over the Index's {INDEX_SIZE_LIMIT_MB} MB.")
    return problems


# --- the .ui file and the module's use of it ----------------------------------------------------------------


class UiWidget(typing.NamedTuple):
    name: str
    widget_class: str
    properties: dict[str, object]  # text of <string>/<bool>/<double>/..., a list for <stringlist>
    items: list[str]  # texts of a combo box's items


def ui_widgets(ui_file: Path) -> dict[str, UiWidget]:
    """Every widget of a Qt Designer file, by object name."""
    widgets = {}
    for element in ElementTree.parse(ui_file).iter("widget"):
        properties = {}
        for prop in element.findall("property"):
            value = prop[0]
            properties[prop.get("name")] = (
                [s.text or "" for s in value] if value.tag == "stringlist" else (value.text or "")
            )
        items = [item.findtext("property/string") or "" for item in element.findall("item")]
        widgets[element.get("name")] = UiWidget(element.get("name"), element.get("class"), properties, items)
    return widgets


def ui_name_problems(module_file: Path, ui_file: Path) -> list[str]:
    """Every `self.ui.<name>` the module uses is a widget of the .ui file (else: AttributeError in Slicer)."""
    used = set(re.findall(r"\bself\.ui\.(\w+)", module_file.read_text()))
    known = ui_widgets(ui_file)
    return [
        f"{module_file.name} uses self.ui.{name}, which {ui_file.name} lacks."
        for name in sorted(used - set(known))
    ]


def scene_connection_problems(ui_file: Path) -> list[str]:
    """Every MRML widget gets the scene: the top widget's mrmlSceneChanged(vtkMRMLScene*) is connected to its
    setMRMLScene(vtkMRMLScene*) (else its node list stays empty in Slicer).
    """
    root = ElementTree.parse(ui_file).getroot()
    top = root.find("widget")
    connected = {
        connection.findtext("receiver")
        for connection in root.iter("connection")
        if connection.findtext("sender") == top.get("name")
        and connection.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and connection.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    mrml_widgets = [w for w in top.iter("widget") if w is not top and w.get("class").startswith("qMRML")]
    return [
        f"{w.get('name')} is not connected to {top.get('name')}'s mrmlSceneChanged(vtkMRMLScene*)."
        for w in mrml_widgets
        if w.get("name") not in connected
    ]


# Widget classes Slicer's parameterNodeWrapper can bind to a field, by field type: what its GUI connectors
# (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py) accept for the types this module uses. Any other
# pairing makes `connectGui` raise "Unable to create GUI connector" when the module opens.
_CONNECTABLE_WIDGETS = {
    float: {"QDoubleSpinBox", "ctkSliderWidget"},
    int: {"QSpinBox", "QSlider"},
    bool: {"QCheckBox", "QPushButton"},
    str: {"QLineEdit", "QTextEdit"},
}


def _split_annotation(hint) -> tuple[object, tuple]:
    if typing.get_origin(hint) is typing.Annotated:
        bare_type, *annotations = typing.get_args(hint)
        return bare_type, tuple(annotations)
    return hint, ()


def _choices(annotations: tuple) -> list | None:
    return next((list(a.choices) for a in annotations if hasattr(a, "choices")), None)


def parameter_binding_problems(ui_file: Path, parameter_class) -> list[str]:
    """Each widget with a `SlicerParameterName` binds a field of the parameter node class, with a widget the
    wrapper can connect to that field's type; no field is bound twice; combo box items equal the field's
    Choice.
    """
    fields = parameter_class.allParameters
    problems = []
    bound: dict[str, str] = {}
    for widget in ui_widgets(ui_file).values():
        parameter = widget.properties.get("SlicerParameterName")
        if parameter is None:
            continue
        if parameter not in fields:
            problems.append(
                f"{widget.name} binds '{parameter}', which is not a field of {parameter_class.__name__}."
            )
            continue
        if parameter in bound:
            problems.append(
                f"{widget.name} and {bound[parameter]} both bind '{parameter}'; only one would work."
            )
        bound[parameter] = widget.name
        bare_type, annotations = _split_annotation(fields[parameter].unalteredType)
        choices = _choices(annotations)
        if isinstance(bare_type, type) and bare_type.__name__.startswith("vtkMRML"):
            accepted = {"qMRMLNodeComboBox"}
            node_types = widget.properties.get("nodeTypes", [])
            if widget.widget_class in accepted and bare_type.__name__ not in node_types:
                problems.append(
                    f"{widget.name} lists {node_types} but '{parameter}' holds a {bare_type.__name__}."
                )
        elif choices is not None:
            accepted = {"QComboBox"} | _CONNECTABLE_WIDGETS.get(bare_type, set())
            if widget.widget_class in accepted and widget.items and widget.items != [str(c) for c in choices]:
                problems.append(f"{widget.name} offers {widget.items} but '{parameter}' allows {choices}.")
        else:
            accepted = _CONNECTABLE_WIDGETS.get(bare_type, set())
        if widget.widget_class not in accepted:
            problems.append(
                f"{widget.name} is a {widget.widget_class}, which cannot be bound to '{parameter}' "
                f"({fields[parameter].unalteredType}); use one of {sorted(accepted)}."
            )
    return problems


def parameter_default_problems(parameter_class) -> list[str]:
    """Each field's default satisfies its Choice / WithinRange (Slicer checks it when it creates the node)."""
    problems = []
    for name, info in parameter_class.allParameters.items():
        _, annotations = _split_annotation(info.unalteredType)
        choices = _choices(annotations)
        if choices is not None and info.default not in choices:
            problems.append(f"The default of '{name}', {info.default!r}, is not one of {choices}.")
        for annotation in annotations:
            if (
                hasattr(annotation, "minimum")
                and not annotation.minimum <= info.default <= annotation.maximum
            ):
                problems.append(
                    f"The default of '{name}', {info.default!r}, is outside [{annotation.minimum}, "
                    f"{annotation.maximum}]."
                )
    return problems


# --- imports ------------------------------------------------------------------------------------------------

# The GUI process must stay light and responsive: the model runs in the worker process.
HEAVY_MODULES = ("torch", "monai", "peft", "transformers", "safetensors", "mafm3.model", "mafm3.engine")
QT_MODULES = ("qt", "ctk")


def _imported_modules(tree: ast.Module, module_level_only: bool) -> list[tuple[int, str]]:
    """(line, module) of each import; with module_level_only, imports inside functions are skipped."""
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import) and not (module_level_only and in_function):
                found.extend((child.lineno, alias.name) for alias in child.names)
            elif (
                isinstance(child, ast.ImportFrom) and child.module and not (module_level_only and in_function)
            ):
                found.append((child.lineno, child.module))
            visit(child, inside)

    visit(tree, False)
    return found


def _matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def import_problems(module_dir: Path, module_name: str) -> list[str]:
    """No file of the module imports the model's stack (torch, monai, ..., mafm3.model); the Lib imports no Qt
    at all, and the module file imports Qt only inside functions (so it loads where there is no Qt).
    """
    problems = []
    for path in sorted(module_dir.rglob("*.py")):
        relative = path.relative_to(module_dir).as_posix()
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, module in _imported_modules(tree, module_level_only=False):
            if _matches(module, HEAVY_MODULES):
                problems.append(
                    f"{relative}:{line} imports {module}; the GUI process must not load the model."
                )
            if relative.startswith(f"{module_name}Lib/") and _matches(module, QT_MODULES):
                problems.append(f"{relative}:{line} imports {module}; {module_name}Lib must stay Qt-free.")
        if relative == f"{module_name}.py":
            for line, module in _imported_modules(tree, module_level_only=True):
                if _matches(module, QT_MODULES):
                    problems.append(
                        f"{relative}:{line} imports {module} at module level; import it in the Widget."
                    )
    return problems


# --- dialogs and the wait cursor ----------------------------------------------------------------------------

_DIALOGS = ("confirmOkCancelDisplay", "confirmYesNoDisplay", "confirmRetryCloseDisplay", "getOpenFileName")


def _calls_in(node: ast.AST) -> set[str]:
    """Names of the functions and methods called anywhere under `node`."""
    return {
        call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
        for call in ast.walk(node)
        if isinstance(call, ast.Call)
    }


def _reachable_calls(called: set[str], methods: dict[str, ast.FunctionDef]) -> set[str]:
    """`called` and every name called by the methods of the class it reaches, however deep."""
    reached, todo = set(called), sorted(called & set(methods))
    visited = set()
    while todo:
        name = todo.pop()
        if name in visited:
            continue
        visited.add(name)
        inner = _calls_in(methods[name])
        reached |= inner
        todo += sorted(inner & set(methods) - visited)
    return reached


def wait_cursor_dialog_problems(module_file: Path) -> list[str]:
    """No confirmation dialog opens under a wait cursor: inside `with ...(waitCursor=True):` the user would
    be asked a question while Slicer shows it is busy. Methods of the class the block calls are followed, and
    the methods they call, however deep (e.g. polling the worker, which may ask about an improved skill).
    """
    tree = ast.parse(module_file.read_text(), filename=str(module_file))
    problems = []
    for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
        for method in methods.values():
            for block in (node for node in ast.walk(method) if isinstance(node, ast.With)):
                waits = any(
                    keyword.arg == "waitCursor" and getattr(keyword.value, "value", False) is True
                    for item in block.items
                    if isinstance(item.context_expr, ast.Call)
                    for keyword in item.context_expr.keywords
                )
                if not waits:
                    continue
                called = _reachable_calls(set().union(*(_calls_in(s) for s in block.body)), methods)
                for dialog in sorted(called & set(_DIALOGS)):
                    problems.append(
                        f"{cls.name}.{method.name} (line {block.lineno}) opens {dialog} under a wait cursor; "
                        "ask before the waitCursor block."
                    )
    return problems
