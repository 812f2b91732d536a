# args: --no-default
# sensitivity on the bundled digits MLP: all four methods and their rank correlation, then a
# float layer (zero delta and Fisher-weighted error) with a subset of methods.
load model datasets/models/digits-mlp.safetensors
load data datasets/digits.csv
set seed 0
quant * int3 gran=channel
sensitivity
sensitivity method=hutchinson probes=16
quant fc1 none
sensitivity method=delta,fisher
