"""`python -m vae_infer ...` runs the same command line as `vae-infer ...`."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="vae-infer")
