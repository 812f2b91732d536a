# args: --no-default
# formats: every canonical format name, its element bits, block and largest finite value at
# scale 1 (OCP: fp8-e4m3 448, fp8-e5m2 57344, fp6-e2m3 7.5, fp6-e3m2 28, fp4-e2m1 6; mxint8 127/64)
formats
