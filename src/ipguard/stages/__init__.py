"""One module per DVC stage. Each reads ``params.yaml`` (only the keys dvc.yaml names for it),
reads its declared dependencies and writes its declared outputs."""
