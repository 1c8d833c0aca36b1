"""What a plug-in imports: the one decorator, and for each seam the spec base to subclass and what its
handler receives and returns (`modelshrink.registry` lists the signatures; docs/extending.md has a
worked example of each). A package of yours adds a stage, data kind, metric, export or model source by registering
them in a module that an entry point of group `modelshrink.plugins` names; it is imported only when a
recipe names a kind that is not built in."""

from modelshrink.data.bundle import DataBundle, make_bundle
from modelshrink.export.base import Exported
from modelshrink.recipe.export_specs import BaseExportSpec
from modelshrink.recipe.schema import BaseDataSpec, BaseMetricSpec, BaseSourceSpec, ModelSpec
from modelshrink.recipe.stage_specs import BaseStageSpec
from modelshrink.registry import register
from modelshrink.stages.base import Stage, StageContext

__all__ = [
    "BaseDataSpec",
    "BaseExportSpec",
    "BaseMetricSpec",
    "BaseSourceSpec",
    "BaseStageSpec",
    "DataBundle",
    "Exported",
    "ModelSpec",
    "Stage",
    "StageContext",
    "make_bundle",
    "register",
]
