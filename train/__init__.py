"""Train the course's variational autoencoder and export it as a model package for `vae_infer`.

Data flow: data -> model -> loss -> fit -> export -> models/<name>/ (read by `vae_infer`).
"""
