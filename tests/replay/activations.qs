# qscope session
# version 0.1.0
# date 2026-12-02T02:36:16Z
# seed 0
# threads 2
# model datasets/models/digits-mlp.safetensors sha256=8801f2401b8715a750614a4e54581c24602be01fdd510aaaa862358145d47beb
# data datasets/digits.csv sha256=d7ff1341011182b7af3733b201a919cea2ffe00f25ff23ba48c5e791daffb498
# split rows, seed 0: train 1078 / calibration 359 (using 359; set calib N counts rows) / held-out test 360 (at the end of the session)
# Was the text golden tests/golden/activations.qs: its point is the numbers, so it is a session
# replayed with --check (tests/run.sh); tests/golden/render.qs keeps the text layouts.
# Re-record after a deliberate change: tests/tools/rerecord.py tests/replay/activations.qs
load model datasets/models/digits-mlp.safetensors
# => path=datasets/models/digits-mlp.safetensors
# => layers=3
# => params=8970
load data datasets/digits.csv
# => path=datasets/digits.csv
# => n=1797
# => features=64
# => classes=10
regime act
# => regime=activation-only
quant * int8 gran=tensor clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int8
# => matched=3
# => bits_per_weight=32
eval
# => regime=activation-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.972222222
# => quant.loss=0.11863666
# => kl=0.000325950538
# => top1_agree=1
# => bits_per_weight=32
# => gate=pass
# => gate_threshold=0.825
quant * int8 gran=tensor clip=max round=nearest range=restricted sym scale=f16 amode=token
# => pattern=*
# => format=int8
# => matched=3
# => bits_per_weight=32
eval
# => regime=activation-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.972222222
# => quant.loss=0.120004388
# => kl=8.86243011e-05
# => top1_agree=1
# => bits_per_weight=32
# => gate=pass
# => gate_threshold=0.825
quant * int8 gran=tensor clip=max round=nearest range=restricted sym scale=f16 amode=static
# => pattern=*
# => format=int8
# => matched=3
# => bits_per_weight=32
eval
# => regime=activation-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.972222222
# => quant.loss=0.116922921
# => kl=0.000373801648
# => top1_agree=1
# => bits_per_weight=32
# => gate=pass
# => gate_threshold=0.825
# => static_amax.fc0=16
# => static_amax.fc1=34.4059219
# => static_amax.fc2=50.8492622
quant * int4 gran=tensor clip=max round=nearest range=restricted sym scale=f16 amode=token
# => pattern=*
# => format=int4
# => matched=3
# => bits_per_weight=32
eval
# => regime=activation-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.95
# => quant.loss=0.148275897
# => kl=0.0381583363
# => top1_agree=0.977777778
# => bits_per_weight=32
# => gate=pass
# => gate_threshold=0.825
error
# => task.float_acc=0.972222222
# => task.threshold=0.825
# => gate=pass
# => regime=activation-only
# => layers[0].name=fc0
# => layers[0].w_rel_err=0
# => layers[0].preact_rel_mse=0.00333341858
# => layers[0].snr_db=24.7711015
# => layers[0].local_rel_mse=0.00333341858
# => layers[0].local_snr_db=24.7711015
# => layers[0].cosine=0.998450419
# => layers[0].kl_alone=0.00554509827
# => layers[0].kl_share=0.155473673
# => layers[1].name=fc1
# => layers[1].w_rel_err=0
# => layers[1].preact_rel_mse=0.0102154189
# => layers[1].snr_db=19.9074382
# => layers[1].local_rel_mse=0.00704235631
# => layers[1].local_snr_db=21.5228201
# => layers[1].cosine=0.995112634
# => layers[1].kl_alone=0.0138722371
# => layers[1].kl_share=0.388950303
# => layers[2].name=fc2
# => layers[2].w_rel_err=0
# => layers[2].preact_rel_mse=0.0443586663
# => layers[2].snr_db=13.5302152
# => layers[2].local_rel_mse=0.0231103582
# => layers[2].local_snr_db=16.3619332
# => layers[2].cosine=0.979187665
# => layers[2].kl_alone=0.016248499
# => layers[2].kl_share=0.455576025
quant * int4 gran=group:16 clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int4
# => matched=3
# => bits_per_weight=32
eval
# => regime=activation-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.944444444
# => quant.loss=0.169204724
# => kl=0.0399172716
# => top1_agree=0.966666667
# => bits_per_weight=32
# => gate=pass
# => gate_threshold=0.825
quant * mxfp8 clip=max round=nearest sat=1
# => pattern=*
# => format=mxfp8
# => matched=3
# => bits_per_weight=32
eval
# => regime=activation-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.972222222
# => quant.loss=0.12352213
# => kl=0.00289578407
# => top1_agree=0.994444444
# => bits_per_weight=32
# => gate=pass
# => gate_threshold=0.825
regime full
# => regime=weight+activation
quant * int4 gran=channel clip=max round=nearest range=restricted sym scale=f16 amode=token
# => pattern=*
# => format=int4
# => matched=3
# => bits_per_weight=4.25
eval
# => regime=weight+activation
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.913888889
# => quant.loss=0.273920257
# => kl=0.148989116
# => top1_agree=0.927777778
# => bits_per_weight=4.25
# => gate=pass
# => gate_threshold=0.825
error
# => task.float_acc=0.972222222
# => task.threshold=0.825
# => gate=pass
# => regime=weight+activation
# => layers[0].name=fc0
# => layers[0].w_rel_err=0.0777587207
# => layers[0].preact_rel_mse=0.010464056
# => layers[0].snr_db=19.8029995
# => layers[0].local_rel_mse=0.010464056
# => layers[0].local_snr_db=19.8029995
# => layers[0].cosine=0.9949599
# => layers[0].kl_alone=0.0178731972
# => layers[0].kl_share=0.254124914
# => layers[0].w_only=0.00700981132
# => layers[0].a_only=0.00333341858
# => layers[0].interaction=0.000120826061
# => layers[1].name=fc1
# => layers[1].w_rel_err=0.0822487568
# => layers[1].preact_rel_mse=0.0244010051
# => layers[1].snr_db=16.1259228
# => layers[1].local_rel_mse=0.0137764653
# => layers[1].local_snr_db=18.608622
# => layers[1].cosine=0.988152494
# => layers[1].kl_alone=0.0240614689
# => layers[1].kl_share=0.342111076
# => layers[1].w_only=0.00652455163
# => layers[1].a_only=0.00704235631
# => layers[1].interaction=0.000209557342
# => layers[2].name=fc2
# => layers[2].w_rel_err=0.095732941
# => layers[2].preact_rel_mse=0.0768688463
# => layers[2].snr_db=11.1424964
# => layers[2].local_rel_mse=0.0370213741
# => layers[2].local_snr_db=14.3154747
# => layers[2].cosine=0.964395616
# => layers[2].kl_alone=0.0283976634
# => layers[2].kl_share=0.40376401
# => layers[2].w_only=0.0132322926
# => layers[2].a_only=0.0231103582
# => layers[2].interaction=0.000678723225
# end of session (20 commands)
