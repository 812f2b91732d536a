# qscope session
# version 0.1.0
# date 2026-12-02T02:37:38Z
# seed 0
# threads 2
# model datasets/models/digits-mlp.safetensors sha256=8801f2401b8715a750614a4e54581c24602be01fdd510aaaa862358145d47beb
# data datasets/digits.csv sha256=d7ff1341011182b7af3733b201a919cea2ffe00f25ff23ba48c5e791daffb498
# split rows, seed 0: train 1078 / calibration 359 (using 359; set calib N counts rows) / held-out test 360 (at the end of the session)
# Was the text golden tests/golden/methods.qs: its point is the numbers, so it is a session
# replayed with --check (tests/run.sh); tests/golden/render.qs keeps the text layouts.
# Re-record after a deliberate change: tests/tools/rerecord.py tests/replay/methods.qs
load model datasets/models/digits-mlp.safetensors
# => path=datasets/models/digits-mlp.safetensors
# => layers=3
# => params=8970
load data datasets/digits.csv
# => path=datasets/digits.csv
# => n=1797
# => features=64
# => classes=10
quant * int3 gran=channel clip=max round=nearest range=restricted sym scale=f16 method=gptq damp=0.01 order=col inputs=quant
# => pattern=*
# => format=int3
# => method=method=gptq damp=0.01 order=col inputs=quant
# => matched=3
# => bits_per_weight=3.25
error
# => task.float_acc=0.972222222
# => task.threshold=0.825
# => gate=pass
# => regime=weight-only
# => layers[0].name=fc0
# => layers[0].w_rel_err=0.313251514
# => layers[0].preact_rel_mse=0.00517280376
# => layers[0].snr_db=22.86274
# => layers[0].local_rel_mse=0.00517280376
# => layers[0].local_snr_db=22.86274
# => layers[0].cosine=0.99743477
# => layers[0].kl_alone=0.0142097502
# => layers[0].kl_share=0.336553799
# => layers[1].name=fc1
# => layers[1].w_rel_err=0.320182826
# => layers[1].preact_rel_mse=0.00963262906
# => layers[1].snr_db=20.1625516
# => layers[1].local_rel_mse=0.00514071684
# => layers[1].local_snr_db=22.8897632
# => layers[1].cosine=0.995213383
# => layers[1].kl_alone=0.00855727803
# => layers[1].kl_share=0.20267664
# => layers[2].name=fc2
# => layers[2].w_rel_err=0.350705364
# => layers[2].preact_rel_mse=0.0319453048
# => layers[2].snr_db=14.9559296
# => layers[2].local_rel_mse=0.0143532278
# => layers[2].local_snr_db=18.4305042
# => layers[2].cosine=0.984687239
# => layers[2].kl_alone=0.0194543054
# => layers[2].kl_share=0.460769562
spectrum fc1 of=weight scale=cov k=4
# => layer=fc1
# => of=weight
# => scale=cov
# => m=64
# => n=64
# => method=exact
# => sv[0]=3.50265336
# => sv[1]=3.01742172
# => sv[2]=2.19473362
# => sv[3]=1.88605535
# => weight_sv[0]=88.3997955
# => weight_sv[1]=27.2968273
# => weight_sv[2]=23.5160713
# => weight_sv[3]=19.4231224
# => fro2=57.1389204
# => top=3.50265336
# => mp_edge=1.88975727
# => eff_rank=27.6488001
# => stable_rank=4.65733751
# => k50=4
# => k90=-1
# => k99=-1
# => null_edge=33.3767837
# => null_top=27.3603443
# => null_margin=6.01643943
# => null_draws=5
# => shape=white
# => task.float_acc=0.972222222
# => task.threshold=0.825
# => gate=pass
# => regime=weight-only
correct fc1 lqer r=4 prec=float
# => layer=fc1
# => method=lqer
# => rank=4
# => prec=float
# => recovery=0.12480813
# => recovery_calib=0.108621979
# => params=512
# => bits_added=16384
# => layer_bits_per_weight=7.25
# => quant_acc=0.969444444
# => task.float_acc=0.972222222
# => task.threshold=0.825
# => gate=pass
# => regime=weight-only
quant fc2 int4 gran=group:32 clip=max round=nearest range=restricted sym scale=f16 weight=imatrix inputs=quant
# => pattern=fc2
# => format=int4
# => method=weight=imatrix inputs=quant
# => matched=1
# => bits_per_weight=5.19565217
quant fc0 int3 gran=channel clip=max round=nearest range=restricted sym scale=f16 method=awq inputs=float
# => pattern=fc0
# => format=int3
# => method=method=awq inputs=float
# => matched=1
# => bits_per_weight=3.57246377
error
# => task.float_acc=0.972222222
# => task.threshold=0.825
# => gate=pass
# => regime=weight-only
# => layers[0].name=fc0
# => layers[0].w_rel_err=0.463976494
# => layers[0].preact_rel_mse=0.0285331566
# => layers[0].snr_db=15.4465018
# => layers[0].local_rel_mse=0.0285331566
# => layers[0].local_snr_db=15.4465018
# => layers[0].cosine=0.98673058
# => layers[0].kl_alone=0.108467239
# => layers[0].kl_share=0.842285094
# => layers[1].name=fc1
# => layers[1].w_rel_err=0.297220221
# => layers[1].preact_rel_mse=0.0377901103
# => layers[1].snr_db=14.2262184
# => layers[1].local_rel_mse=0.00609810375
# => layers[1].local_snr_db=22.1480519
# => layers[1].cosine=0.983277031
# => layers[1].kl_alone=0.0128840421
# => layers[1].kl_share=0.10004898
# => layers[2].name=fc2
# => layers[2].w_rel_err=0.112747811
# => layers[2].preact_rel_mse=0.0765900003
# => layers[2].snr_db=11.1582793
# => layers[2].local_rel_mse=0.0158653602
# => layers[2].local_snr_db=17.9955006
# => layers[2].cosine=0.962115142
# => layers[2].kl_alone=0.00742606503
# => layers[2].kl_share=0.0576659268
quant * int3 gran=channel clip=max round=nearest range=restricted sym scale=f16 rotate=hadamard
# => pattern=*
# => format=int3
# => method=rotate=hadamard
# => matched=3
# => bits_per_weight=3.25
regime full
# => regime=weight+activation
quant * int4 gran=channel clip=max round=nearest range=restricted sym scale=f16 amode=static smooth=0.5
# => pattern=*
# => format=int4
# => method=smooth=0.5
# => matched=3
# => bits_per_weight=4.94565217
eval
# => regime=weight+activation
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.930555556
# => quant.loss=0.214522733
# => kl=0.0969061568
# => top1_agree=0.947222222
# => bits_per_weight=4.94565217
# => gate=pass
# => gate_threshold=0.825
# => static_amax.fc0=2.60252237
# => static_amax.fc1=3.56125307
# => static_amax.fc2=3.23870873
# end of session (13 commands)
