"""Every step of every task, whatever its modality, runs in its task's pool (limit 1 in dagster_home/dagster.yaml):
two runs of one task never ingest, train or publish at once."""

from meddiag_pipelines.definitions import defs


def test_every_asset_of_every_task_is_in_its_task_pool():
    graph = defs.resolve_asset_graph()
    by_modality: dict[str, int] = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        modality = (node.tags or {}).get("modality")
        if modality is None:  # not a task's asset (the spec_errors group)
            continue
        assert defs.resolve_assets_def(key).op.pool == f"meddiag_{node.group_name}", key.to_user_string()
        by_modality[modality] = by_modality.get(modality, 0) + 1
    assert set(by_modality) == {"tabular", "image", "text"}  # every modality was looked at
