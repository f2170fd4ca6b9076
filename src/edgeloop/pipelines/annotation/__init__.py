"""annotation: Label Studio tasks out (export), corrected labels in (import)."""

from edgeloop.pipelines.annotation.pipeline import (
    create_pipeline,
    export_pipeline,
    import_pipeline,
)

__all__ = ["create_pipeline", "export_pipeline", "import_pipeline"]
