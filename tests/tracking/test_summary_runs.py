"""The summary runs of a study: one per configuration, medians over its finished seeds, and a configuration whose
every seed was killed still appears, with its counts."""

import math

import pandas as pd
from mlflow.tracking import MlflowClient

from nucleiseg.tracking.summary_runs import write_summary_runs


def test_every_configuration_gets_a_summary_run_even_with_only_killed_seeds(tracking_uri):
    client = MlflowClient(tracking_uri)
    client.create_experiment("summaries")
    runs = pd.DataFrame(
        {
            "configuration": ["ResNet-50 (ImageNet)"] * 3 + ["DenseNet-121 (ImageNet)"] * 2,
            "finished": [True, True, False, False, False],
            "status": ["FINISHED", "FINISHED", "FAILED", "KILLED", "KILLED"],
            "jaccard": [0.70, 0.74, math.nan, math.nan, math.nan],
        }
    )
    write_summary_runs(client, "summaries", runs)
    experiment = client.get_experiment_by_name("summaries").experiment_id
    found = {r.data.tags["configuration"]: r.data.metrics for r in client.search_runs([experiment])}
    assert set(found) == {"ResNet-50 (ImageNet)", "DenseNet-121 (ImageNet)"}
    resnet, densenet = found["ResNet-50 (ImageNet)"], found["DenseNet-121 (ImageNet)"]
    assert resnet["n"] == 2 and resnet["n_failed"] == 1 and math.isclose(resnet["jaccard/median"], 0.72)
    assert densenet["n"] == 0 and densenet["n_killed"] == 2 and "jaccard/median" not in densenet
