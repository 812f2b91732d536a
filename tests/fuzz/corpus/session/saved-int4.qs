# qscope session
# version 0.1.0
# date 2026-12-01T04:22:53Z
# seed 0
# threads 2
# model datasets/models/digits-mlp.safetensors sha256=8801f2401b8715a750614a4e54581c24602be01fdd510aaaa862358145d47beb
# data datasets/digits.csv sha256=d7ff1341011182b7af3733b201a919cea2ffe00f25ff23ba48c5e791daffb498
load model datasets/models/digits-mlp.safetensors
# => path=datasets/models/digits-mlp.safetensors
# => layers=3
# => params=8970
load data datasets/digits.csv
# => path=datasets/digits.csv
# => n=1797
# => features=64
# => classes=10
quant * int4 gran=group:16 clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int4
# => matched=3
# => bits_per_weight=5
error
# => task.float_acc=0.972222222
# => task.threshold=0.825
# => gate=pass
# => regime=weight-only
# => layers[0].name=fc0
# => layers[0].w_rel_err=0.0681482121
# => layers[0].preact_rel_mse=0.00461882584
# => layers[0].snr_db=23.3546841
# => layers[0].local_rel_mse=0.00461882584
# => layers[0].local_snr_db=23.3546841
# => layers[0].cosine=0.997690328
# => layers[0].kl_alone=0.0090070195
# => layers[0].kl_share=0.302453011
# => layers[1].name=fc1
# => layers[1].w_rel_err=0.0698159122
# => layers[1].preact_rel_mse=0.00900351039
# => layers[1].snr_db=20.4558813
# => layers[1].local_rel_mse=0.00517239908
# => layers[1].local_snr_db=22.8630797
# => layers[1].cosine=0.995500216
# => layers[1].kl_alone=0.0106188671
# => layers[1].kl_share=0.35657837
# => layers[2].name=fc2
# => layers[2].w_rel_err=0.0745750547
# => layers[2].preact_rel_mse=0.0472874514
# => layers[2].snr_db=13.2525409
# => layers[2].local_rel_mse=0.016462335
# => layers[2].local_snr_db=17.8350857
# => layers[2].cosine=0.976916854
# => layers[2].kl_alone=0.0101540103
# => layers[2].kl_share=0.340968619
roundtrip fp8-e4m3 0.3 -1 500
# => format=fp8-e4m3
# => in[0]=0.3
# => in[1]=-1
# => in[2]=500
# => out[0]=0.3125
# => out[1]=-1
# => out[2]=448
# end of session (5 commands)
