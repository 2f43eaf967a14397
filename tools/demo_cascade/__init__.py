"""The offline demo cascade: procedural material data, a small IF-layout cascade trained on it,
and the scripts that train and evaluate it (`python -m tools.demo_cascade.train|evaluate|hue`)."""
