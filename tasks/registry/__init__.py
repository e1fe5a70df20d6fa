"""Registry stage: the model gate, the MLflow store, lineage, recorded decisions and champion events."""
