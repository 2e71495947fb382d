"""The split asset of every modality."""

from collections.abc import Callable

import dagster as dg
import polars as pl

from meddiag_pipelines.defs.assets.common import markdown_table, no_model_recorded, pool
from meddiag_pipelines.defs.resources.storage import MeddiagStorage
from meddiag_pipelines.specs import TaskSpec
from meddiag_pipelines.split import SPLIT_COLUMN, SPLITS, check_split, split_by_content


# predictor_factory(plan) -> predict(model_dir, rows) -> probabilities
# -- split ------------------------------------------------------------------------------------------------------
def warn_split_findings(context, spec: TaskSpec, findings: dict) -> None:
    """What the split handled but a person should know: conflicting labels on copies, classes too rare to learn."""
    if findings.get("conflicting_label_contents"):
        context.log.warning(
            f"{spec.name}: {findings['conflicting_label_contents']} contents appear with more than "
            f"one label ({findings['conflicting_label_rows']} rows); kept, in one split each"
        )
    if findings.get("unlearnable_classes"):
        context.log.warning(f"{spec.name}: classes with {findings['unlearnable_classes']}")


def build_split_asset(
    spec: TaskSpec,
    upstream,
    tags: dict,
    predefined: str | None = None,
    finish: Callable[[pl.DataFrame], tuple[pl.DataFrame, dict]] | None = None,
    family_report: Callable[[MeddiagStorage], None] | None = None,
) -> list:
    """The split asset of every modality. ``predefined``: a column holding the data's own split, kept where set
    (MedMNIST npz); ``finish(frame) -> (frame, metadata)``: a modality's own last step; ``family_report``: for a
    task of a family, what rewrites the family's comparison (a split error is recorded for it)."""
    name = spec.name
    own = f", except that rows holding their dataset's own split ({predefined}) keep it" if predefined else ""

    @dg.asset(
        key=[name, "split"],
        io_manager_key="warehouse_io_manager",
        kinds={"polars"},
        pool=pool(spec),
        description=f"{name}: train / val / test by a stable hash of {spec.patient_id or spec.id}, "
        f"with identical content (normalised text, pixels, identical feature rows) kept in one split{own}; "
        "unlabelled rows are 'score'. Nothing (and no later step) while no batch has validated.",
        output_required=False,
        **tags,
    )
    def split(context: dg.AssetExecutionContext, storage: MeddiagStorage, validated_records: pl.DataFrame):
        if validated_records.width == 0:  # every batch so far quarantined or waiting: validated_records says why
            context.log.warning(
                f"{name}: no validated rows yet (the task's batches are quarantined or waiting; "
                "validated_records says why): nothing to split; the later steps run once a batch "
                "validates"
            )
            return
        with no_model_recorded(spec, storage, "split", validated_records, family_report):
            frame, metadata = split_by_content(validated_records, spec, predefined)
            warn_split_findings(context, spec, metadata)
            if finish is not None:
                frame, extra = finish(frame)
                metadata = {**metadata, **extra}
            table = check_split(frame, spec, predefined)
        rows = [{"split": s, **{str(k): v for k, v in sorted(table[s].items())}} for s in SPLITS]
        counts = {f"n_{s}": int(frame.filter(pl.col(SPLIT_COLUMN) == s).height) for s in (*SPLITS, "score")}
        yield dg.Output(frame, metadata={**counts, **metadata, "by_class": dg.MetadataValue.md(markdown_table(rows))})

    return [split]
