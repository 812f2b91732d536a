# args: --no-default
roundtrip fp8-e4m3 0 0.1 1 1.0625 1.125 240 448 500 -0.001953125 0.0009765625
roundtrip fp8-e4m3 1000 sat=0
roundtrip fp8-e5m2 1 57344 60000 70000 sat=0
roundtrip e3m4b1 0.0625 124 200
roundtrip int4 -9 -7.5 -0.5 0.5 1.5 2.5 7.4
roundtrip nf4 -1 -0.5 0.1 0.9
roundtrip mxfp4 0.1 0.2 0.4 1 3 6 12 -24
codes fp4-e2m1
codes fp6-e2m3
codes nf4
