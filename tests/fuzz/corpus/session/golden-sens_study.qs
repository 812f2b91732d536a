# args: --no-default
# the Q1 study on the bundled models and three seeds, then one model named with its data file.
study q1
study q1 models=datasets/models/moons-mlp.safetensors:datasets/moons.csv seeds=5 prec=int8 format=int4 gran=channel
