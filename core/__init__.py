"""castex core: pure-PyTorch CasTex texture synthesis for one asset (no Ray, no fsspec)."""

__version__ = "0.1.0"
