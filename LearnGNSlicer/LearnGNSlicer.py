"""LearnGN Registration: deformable registration with learned Gauss-Newton optimisation.

This file holds what Slicer requires of a scripted module (module, widget, logic, self-test);
the work is done in ``LearnGNSlicerLib`` (MRML export/import, worker process, results) and the
engine ``learngn``, which runs in a separate process so the application stays responsive.
"""
from __future__ import annotations

import logging
import time
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTransformNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LearnGNSlicerLib.dependencies import SlicerInstaller, ensure_dependencies, read_requirements
from LearnGNSlicerLib.job import JobState, RegistrationCancelled, RegistrationJob
from LearnGNSlicerLib.logic import RegistrationLogic
from LearnGNSlicerLib.presets import available_presets, preset_info
from LearnGNSlicerLib.resources import optional_resource_path, resource_path
from LearnGNSlicerLib.settings import DEFAULT_PRESET, Device, Prealign, optional_positive
from LearnGNSlicerLib.ui_state import ProcessingState, apply_button, finished_status, inputs_editable, stage_label


#
# LearnGNSlicer
#


class LearnGNSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LearnGN Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["LearnGNSlicer developers"]
        self.parent.helpText = _("""
Deformable registration of a moving volume to a fixed volume by differentiable Gauss-Newton
optimisation (Learning Registration Models with Differentiable Gauss-Newton Optimisation, MIDL 2022):
classic Gauss-Newton on MIND-SSC features by default, learned predictors in the presets that ship a
trained model. Pick the fixed and the moving volume and press Apply; the registration runs in the
background (GPU when available) and produces a displacement-field transform and the warped volume.
See <a href="https://github.com/LearnGNSlicer/LearnGNSlicer/blob/main/docs/SLICER_MODULE.md">the module documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Based on the method of Mattias P. Heinrich and Lasse Hansen (MIDL 2022 short paper). Module
structure follows the 3D Slicer scripted-module template.
""")
        # Slicer only looks for the icon next to this file (built extension); a source checkout has
        # Resources/ one level up.
        iconPath = optional_resource_path("Icons/LearnGNSlicer.png")
        if iconPath:
            self.parent.icon = qt.QIcon(iconPath)


#
# LearnGNSlicerParameterNode
#


@parameterNodeWrapper
class LearnGNSlicerParameterNode:
    """The module's choices, saved with the scene.

    Numbers at 0 mean "use the preset's value" (the spin boxes show "Preset default").
    Empty outputs mean "create new nodes when the results arrive".
    """

    fixedVolume: Optional[vtkMRMLScalarVolumeNode]
    movingVolume: Optional[vtkMRMLScalarVolumeNode]
    fixedMask: Optional[vtkMRMLScalarVolumeNode]
    movingMask: Optional[vtkMRMLScalarVolumeNode]
    fixedSegmentation: Optional[vtkMRMLSegmentationNode]
    movingSegmentation: Optional[vtkMRMLSegmentationNode]
    preset: str = DEFAULT_PRESET
    iterations: Annotated[int, WithinRange(0, 100)] = 0
    gridStride: Annotated[int, WithinRange(0, 16)] = 0
    regularisation: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    prealign: Prealign = Prealign.PRESET
    device: Device = Device.AUTO
    outputTransform: Optional[vtkMRMLTransformNode]
    outputVolume: Optional[vtkMRMLScalarVolumeNode]


#
# LearnGNSlicerWidget
#


class LearnGNSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._state = ProcessingState.IDLE
        self._job: Optional[RegistrationJob] = None
        self._lastResult = None
        self._presetInfos = {}

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resource_path("UI/LearnGNSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LearnGNSlicerLogic()

        presets = available_presets()
        self._presetInfos = {name: preset_info(name) for name in presets}
        self.ui.presetComboBox.addItems(presets)
        for index, name in enumerate(presets):  # each preset's description as the tooltip of its entry
            self.ui.presetComboBox.setItemData(index, self._presetInfos[name].description, qt.Qt.ToolTipRole)
        self.ui.progressBar.setVisible(False)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showResultButton.connect("clicked(bool)", self.onShowResultButton)
        self.ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetChanged)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None and not self._job.finished:
            self._job.cancel()
        if self.logic is not None:
            self.logic.stop_worker()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        try:  # the first Apply then finds PyTorch imported; a failure here shows at Apply, with its cause
            self.logic.prepare_worker()
        except Exception:
            logging.exception("LearnGNSlicer: the warm worker could not be started ahead of Apply")

    def exit(self) -> None:
        # Stop following the parameter node while hidden; enter() connects it again.
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None and not self._job.finished:
            self._job.cancel()  # its inputs are about to disappear
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node ----------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        node = self._parameterNode
        volumes = [v for v in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if not v.IsA("vtkMRMLLabelMapVolumeNode")]
        if not node.fixedVolume and volumes:
            node.fixedVolume = volumes[0]
        others = [v for v in volumes if node.fixedVolume is None or v.GetID() != node.fixedVolume.GetID()]
        if not node.movingVolume and others:
            node.movingVolume = others[0]

    def setParameterNode(self, inputParameterNode: Optional[LearnGNSlicerParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
            self._updateGUI()

    def onPresetChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.preset = self.ui.presetComboBox.itemText(index)
            if self._presetInfo(self._parameterNode.preset).needs_segmentations:
                self.ui.guidanceCollapsibleButton.collapsed = False  # where the required inputs are

    def _presetInfo(self, name: str):
        if name not in self._presetInfos:
            self._presetInfos[name] = preset_info(name)
        return self._presetInfos[name]

    def _updateGUI(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if node is None:
            return
        presetIndex = self.ui.presetComboBox.findText(node.preset)
        if presetIndex < 0:  # a scene saved with a preset this installation lacks
            self.ui.presetComboBox.addItem(node.preset)
            presetIndex = self.ui.presetComboBox.count - 1
        if self.ui.presetComboBox.currentIndex != presetIndex:
            self.ui.presetComboBox.currentIndex = presetIndex

        info = self._presetInfo(node.preset)
        self.ui.presetComboBox.toolTip = info.description or _("Registration settings and trained model to use.")
        self.ui.presetDescriptionLabel.text = info.description
        self.ui.guidanceCollapsibleButton.text = guidance_title(info.needs_segmentations)
        missing = missing_input(node.fixedVolume.GetID() if node.fixedVolume else None,
                                node.movingVolume.GetID() if node.movingVolume else None, node.preset,
                                info.needs_segmentations, node.fixedSegmentation is not None,
                                node.movingSegmentation is not None)
        look = apply_button(self._state, not missing, missing)
        self.ui.applyButton.text = look.text
        self.ui.applyButton.toolTip = look.tooltip
        self.ui.applyButton.enabled = look.enabled
        editable = inputs_editable(self._state)
        for section in (self.ui.inputsCollapsibleButton, self.ui.guidanceCollapsibleButton,
                        self.ui.advancedCollapsibleButton, self.ui.outputsCollapsibleButton):
            section.enabled = editable
        result = self._lastResult
        self.ui.showResultButton.enabled = bool(
            result and editable and _inScene(result.warped_node) and _inScene(result.transform_node.GetNodeReference(
                result.transform_node.GetFixedNodeReferenceRole())))

    def _setState(self, state: ProcessingState) -> None:
        self._state = state
        self.ui.progressBar.setVisible(state != ProcessingState.IDLE)
        self._updateGUI()

    # -- running -----------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self._state == ProcessingState.RUNNING:
            self._setState(ProcessingState.CANCELLING)
            self._job.cancel()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the registration.")):
            self.logic.ensureDependencies()
            node = self._parameterNode
            self.ui.resultLabel.text = ""
            self.ui.progressBar.value = 0
            self._job = self.logic.start(
                node.fixedVolume, node.movingVolume,
                fixed_mask=node.fixedMask, moving_mask=node.movingMask,
                fixed_segmentation=node.fixedSegmentation, moving_segmentation=node.movingSegmentation,
                preset=node.preset, device=node.device,
                iterations=optional_positive(node.iterations), grid_stride=optional_positive(node.gridStride),
                regularisation=optional_positive(node.regularisation), prealign=node.prealign,
                output_transform=node.outputTransform, output_volume=node.outputVolume,
                on_progress=self._onProgress, on_finished=self._onFinished,
            )
            if not self._job.finished:
                self._setState(ProcessingState.RUNNING)

    def _onProgress(self, progress) -> None:
        self.ui.progressBar.value = int(round(100 * progress.fraction))
        label = stage_label(progress.stage)
        self.ui.statusLabel.text = f"{label}: {progress.message}" if progress.message and progress.message != label else label

    def _onFinished(self, job: RegistrationJob) -> None:
        self._setState(ProcessingState.IDLE)
        if job.state == JobState.SUCCEEDED:
            self._lastResult = job.result
            lines = [job.result.describe(), *job.result.messages]
            lines.append(_("Output: transform '{transform}', volume '{volume}'.").format(
                transform=job.result.transform_node.GetName(), volume=job.result.warped_node.GetName()))
            self.ui.resultLabel.text = "\n".join(lines)
            self.ui.statusLabel.text = finished_status(job.result.messages)
            self._updateGUI()
        elif job.state == JobState.CANCELLED:
            self.ui.statusLabel.text = _("Cancelled; nothing was added to the scene.")
        else:
            self.ui.statusLabel.text = stage_label("failed")
            details = getattr(job.error, "details", "")
            slicer.util.errorDisplay(str(job.error), detailedText=details or None)

    def onShowResultButton(self) -> None:
        result = self._lastResult
        fixed = result.transform_node.GetNodeReference(result.transform_node.GetFixedNodeReferenceRole())
        slicer.util.setSliceViewerLayers(background=fixed, foreground=result.warped_node, foregroundOpacity=0.5, fit=True)


def _inScene(node) -> bool:
    """False for nodes the user deleted since (the result's nodes may be gone)."""
    return node is not None and bool(slicer.mrmlScene.IsNodePresent(node))


#
# LearnGNSlicerLogic
#


class LearnGNSlicerLogic(ScriptedLoadableModuleLogic, RegistrationLogic):
    """Scriptable registration; see RegistrationLogic for ``register`` and ``start``.

    ``ScriptedLoadableModuleLogic.__init__`` calls ``super().__init__()``, which initialises
    ``RegistrationLogic`` with its defaults (Slicer's Python as the worker, GPU check on).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return LearnGNSlicerParameterNode(super().getParameterNode())

    def register(self, fixed, moving, **options):
        """Blocking registration that keeps the application painting while it waits."""
        options.setdefault("between_polls", slicer.app.processEvents)
        return RegistrationLogic.register(self, fixed, moving, **options)

    def ensureDependencies(self) -> None:
        """Install PyTorch and the packages in Resources/requirements.txt if missing (asks first)."""
        ensure_dependencies(SlicerInstaller(), read_requirements(resource_path("requirements.txt")))


#
# LearnGNSlicerTest
#


class LearnGNSlicerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: a real registration of two sample MRIs on the CPU, cancel, bad input."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_registration_brings_volumes_closer()
        self.setUp()
        self.test_cancel_leaves_scene_unchanged()
        self.setUp()
        self.test_missing_fixed_volume_is_a_clear_error()

    def _sampleVolumes(self):
        import SampleData

        fixed = SampleData.downloadSample("MRBrainTumor1")
        moving = SampleData.downloadSample("MRBrainTumor2")
        return fixed, moving

    def test_registration_brings_volumes_closer(self):
        from LearnGNSlicerLib.geometry import sample_in_world, voxels, world_grid
        from LearnGNSlicerLib.metrics import normalized_cross_correlation

        self.delayDisplay("Loading sample volumes")
        fixed, moving = self._sampleVolumes()
        movingVoxels = voxels(moving)
        logic = LearnGNSlicerLogic()
        logic.ensureDependencies()

        self.delayDisplay("Registering on the CPU")
        result = logic.register(fixed, moving, device="cpu", timeout=1800)

        fixedVoxels = voxels(fixed)
        mask = fixedVoxels > 0.05 * fixedVoxels.max()  # compare inside the head
        before = normalized_cross_correlation(fixedVoxels, sample_in_world(moving, world_grid(fixed)[0]), mask)
        after = normalized_cross_correlation(fixedVoxels, voxels(result.warped_node), mask)
        logging.info(f"LearnGNSlicer self-test: NCC before {before:.3f}, after {after:.3f}; {result.describe()}")
        self.assertGreater(after, before + 0.02)
        self.assertEqual(result.transform_node.GetClassName(), "vtkMRMLTransformNode")
        self.assertTrue(result.transform_node.GetTransformFromParent().IsA("vtkOrientedGridTransform"))
        self.assertIs(result.transform_node.GetNodeReference("spatialRegistrationMoving"), moving)
        self.assertTrue((voxels(moving) == movingVoxels).all(), "the moving volume must not change")
        self.assertIsNone(moving.GetTransformNodeID())
        self.delayDisplay("Registration test passed")

    def test_cancel_leaves_scene_unchanged(self):
        fixed, moving = self._sampleVolumes()
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        progress = []
        job = LearnGNSlicerLogic().start(fixed, moving, device="cpu", on_progress=progress.append)  # Qt timer driven
        deadline = time.monotonic() + 600
        while not job.finished and time.monotonic() < deadline:
            slicer.app.processEvents()
            if job.state == JobState.RUNNING and any(p.stage not in ("export", "device", "start") for p in progress):
                job.cancel()
            time.sleep(0.05)
        self.assertEqual(job.state, JobState.CANCELLED)
        self.assertIsInstance(job.error, RegistrationCancelled)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)
        self.delayDisplay("Cancel test passed")

    def test_missing_fixed_volume_is_a_clear_error(self):
        _, moving = self._sampleVolumes()
        with self.assertRaises(ValueError) as context:
            LearnGNSlicerLogic().register(None, moving, device="cpu")
        self.assertIn("fixed volume", str(context.exception))
        with self.assertRaises(ValueError):
            LearnGNSlicerLogic().register(moving, moving, device="cpu")
        self.delayDisplay("Bad input test passed")
