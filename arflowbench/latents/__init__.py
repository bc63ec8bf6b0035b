"""Latent space: encode images with a diffusers AutoencoderKL once (`prepare.py`), read the cached
posterior moments memory-mapped (`cache.py`); the `latents` dataset plugin (`data/latents.py`)
samples training latents from them and decodes generated latents back to images."""
