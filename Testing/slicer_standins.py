"""Stand-ins for the parts of the Slicer application that the `slicer-core` wheel does not have.

`slicer-core` (PyPI, Kitware) holds every Slicer library that needs no Qt: a real `vtkMRMLScene`, volume and
segmentation nodes, storage nodes, module logics, and `slicer.util`. It lacks what the Qt application
provides. `MAFM3Slicer.py` touches a few of those pieces when it is imported; its Logic and the `slicer.util`
helpers need the application's scene and, for segments, the Segmentations module. Each stand-in below is the
smallest one that lets that happen; its docstring says what the real piece is and why the stand-in is enough.
Nothing here imitates a widget: Widget behaviour is tested inside Slicer (`Testing/Python/`).

Deliberately absent: `qt` and `ctk`. The module imports neither at module level (only Widget methods would),
so it needs no empty stand-in modules. Without them, code that reaches for Qt fails with
"No module named 'qt'" instead of an AttributeError on an empty module. `test_slicer_harness.py` checks this.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import types
import typing
import unittest
from collections.abc import Iterator
from typing import NamedTuple

import slicer

# --- slicer.i18n --------------------------------------------------------------------------------------------


def _make_i18n() -> types.ModuleType:
    """`slicer.i18n`: in Slicer, `tr`/`translate` look text up in Qt's translation catalogues
    (QCoreApplication).

    Without Qt there is no catalogue, so the text is returned unchanged, which is what Slicer itself shows
    when no translation exists.
    """
    module = types.ModuleType("slicer.i18n")
    module.tr = lambda text: text
    module.translate = lambda context, text: text
    return module


# --- slicer.ScriptedLoadableModule --------------------------------------------------------------------------


class ScriptedLoadableModule:
    """Stand-in base of the module class. The real one also sets a Qt icon and registers the self-test with
    the application. Headless, only the metadata that the module writes onto `parent` is needed, so tests can
    read it.
    """

    def __init__(self, parent):
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    """Stand-in base of the Widget class: the module file must be able to *define* its Widget. It is never
    instantiated headless, because the real base builds Qt layouts.
    """

    def __init__(self, parent=None):
        raise RuntimeError(
            "A module widget needs the Slicer application; test it in Slicer (Testing/Python)."
        )


class ScriptedLoadableModuleLogic:
    """Stand-in base of the Logic class, with the one behaviour of the real one that needs no Qt: the module's
    parameter node is the scene's singleton `vtkMRMLScriptedModuleNode` tagged with the module name.
    """

    def __init__(self, parent=None):
        name = type(self).__name__
        self.moduleName = name.removesuffix("Logic")

    def getParameterNode(self):
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)  # CreateNodeByClass hands over a reference that Python already holds
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    """Stand-in base of the self-test class. The real one is a `unittest.TestCase` whose `delayDisplay` shows
    a message in the application window. Here the message goes to the log instead.
    """

    def delayDisplay(self, message, msec=None):
        logging.info(message)


def _make_scripted_loadable_module() -> types.ModuleType:
    """`slicer.ScriptedLoadableModule`: the real one imports `qt`, `ctk` and `slicer.app` at import time."""
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    classes = (
        ScriptedLoadableModule,
        ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    )
    for cls in classes:
        setattr(module, cls.__name__, cls)
    module.__all__ = [cls.__name__ for cls in classes]
    return module


# --- slicer.parameterNodeWrapper ----------------------------------------------------------------------------


class Choice:
    """Stand-in for the real validator `Choice(choices)`: same attribute, no validation."""

    def __init__(self, choices):
        self.choices = list(choices)


class WithinRange:
    """Stand-in for the real validator `WithinRange(minimum, maximum)`: same attributes, no validation."""

    def __init__(self, minimum, maximum):
        self.minimum = minimum
        self.maximum = maximum


class ParameterInfo(NamedTuple):
    """One declared field: the real wrapper keeps name, (annotated) type and default the same way."""

    basename: str
    unalteredType: object  # the annotation as written, `Annotated[...]` included
    default: object


# The real wrapper's default for a field declared without a value (its serializers' `default()`).
_DEFAULT_DEFAULTS = {str: "", float: 0.0, int: 0, bool: False}


def parameterNodeWrapper(cls):
    """Stand-in for `@parameterNodeWrapper`. The real decorator imports `qt` (its serializers subclass
    `qt.QColor` at import time) and turns every field into a property stored in the scripted module node.

    This one records the fields the way the real one does (`allParameters`: name -> ParameterInfo), so tests
    can check the `.ui` bindings against them, and keeps the wrapped node as `parameterNode`. It stores
    nothing: reading or writing a field raises, so no test can pass on the stand-in's behaviour instead of
    Slicer's.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    all_parameters = {}
    for name, hint in hints.items():
        bare_type = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        default = cls.__dict__[name] if name in cls.__dict__ else _DEFAULT_DEFAULTS.get(bare_type)
        all_parameters[name] = ParameterInfo(name, hint, default)
        setattr(cls, name, _unavailable_field(name))
    cls.allParameters = all_parameters
    cls._is_parameter_node_wrapper = True

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode

    cls.__init__ = __init__
    return cls


def _unavailable_field(name: str) -> property:
    def fail(self, *value):
        raise AttributeError(
            f"The parameterNodeWrapper stand-in does not store `{name}`; test parameter values in Slicer."
        )

    return property(fail, fail)


def _make_parameter_node_wrapper() -> types.ModuleType:
    module = types.ModuleType("slicer.parameterNodeWrapper")
    module.parameterNodeWrapper = parameterNodeWrapper
    module.Choice = Choice
    module.WithinRange = WithinRange
    return module


# --- installation -------------------------------------------------------------------------------------------

_STANDIN_FACTORIES = {
    "i18n": _make_i18n,
    "ScriptedLoadableModule": _make_scripted_loadable_module,
    "parameterNodeWrapper": _make_parameter_node_wrapper,
}


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Install the `slicer.*` stand-in modules for the duration of the block, then remove them again."""
    for name, factory in _STANDIN_FACTORIES.items():
        module = factory()
        sys.modules[f"slicer.{name}"] = module
        setattr(slicer, name, module)
    try:
        yield
    finally:
        for name in _STANDIN_FACTORIES:
            del sys.modules[f"slicer.{name}"]
            delattr(slicer, name)


@contextlib.contextmanager
def application_scene() -> Iterator[object]:
    """A fresh scene, set up the way the Slicer application sets up its own, for the duration of the block.

    - `slicer.mrmlScene`: in Slicer, the application's scene. `slicer.util` helpers (`addVolumeFromArray`,
      `getNode`, ...) and `ScriptedLoadableModuleLogic.getParameterNode` read it, so it is assigned here.
    - Segmentations module logic with `SetMRMLScene`: in Slicer, loading the Segmentations module does this,
      and that call registers the segmentation converter rules (binary labelmap, closed surface, ...). Without
      it, `AddEmptySegment` fails with "Unable to construct empty representation type 'Binary labelmap'".
    - Colors module logic with its default colour tables, registered as "Colors" with an application logic
      that the Volumes logic knows: in Slicer, the application logic holds every module logic. Label map
      display nodes (e.g. the temporary ones of `slicer.util.arrayFromSegmentBinaryLabelmap`) get their
      colour table through it.
    - `slicer.modules`: in Slicer, the module manager fills it. `slicer.util`'s segment-array helpers call
      `slicer.modules.segmentations.logic()` and volume helpers `slicer.modules.volumes.logic()`, so the
      namespace offers exactly these two logics, bound to this scene.
    """
    scene = slicer.vtkMRMLScene()
    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations_logic.SetMRMLScene(scene)
    application_logic = slicer.vtkSlicerApplicationLogic()
    application_logic.SetMRMLScene(scene)
    colors_logic = slicer.vtkMRMLColorLogic()
    colors_logic.SetMRMLScene(scene)
    colors_logic.AddDefaultColorNodes()
    application_logic.SetModuleLogic("Colors", colors_logic)
    volumes_logic = slicer.vtkSlicerVolumesLogic()
    volumes_logic.SetMRMLApplicationLogic(application_logic)
    volumes_logic.SetMRMLScene(scene)
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: segmentations_logic),
        volumes=types.SimpleNamespace(logic=lambda: volumes_logic),
    )
    try:
        yield scene
    finally:
        del slicer.mrmlScene, slicer.modules
        scene.Clear(1)  # the logics go with their last reference; detaching them first only logs warnings
