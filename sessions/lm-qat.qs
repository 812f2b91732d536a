# qscope session
# version 0.1.0
# date 2026-12-01T11:01:44Z
# seed 0
# threads 2
# model datasets/models/tiny-gpt2 sha256=e993ea58d794ad3a662f2af8c5f872650730967c4af8ca099508910695ce94aa
# data datasets/text/licenses.txt sha256=c4cf44e5bcffdbec176f8831e48024c1af63fe31043616b9bfedaa56ee6a3248
# model datasets/models/tiny-llama sha256=6f7894f9a7a9920f23cf57708abbd64469ee3e9a289489b8db2b91b022f84317
# Quantization-aware training of transformers (qat on the one model core): tiny-gpt2 at int3 per
# channel, held-out loss before (PTQ) and after one epoch of straight-through AdamW on the tokens
# before the held-out 10 % (the quantized loss the hooks see before training is eval's own); then
# int8 static activation scales on block 0 too, trained through (dx = dy); then tiny-llama at
# int3 per channel; last, tiny-llama afresh at int3 trained block by block (qat mode=block,
# EfficientQAT's Block-AP: each block learns to reproduce its float output on 64 sample windows,
# from the stream of the blocks already trained). Weight scales are recomputed from the master
# weights every step (scales=fixed, the default). Then learned scales (scales=lsq, LSQ: Esser et al.
# 2020): tiny-gpt2 afresh at int3 per channel with the same run as the first qat but the per-channel
# scales trained with the weights (compare qat_loss), its packed export loaded back (its float loss
# is the learned-scale quantized loss: codes and scales hold the trained weight exactly), and
# tiny-llama block by block with learned scales. Replay: qscope --replay sessions/lm-qat.qs --check
load model datasets/models/tiny-gpt2
# => path=datasets/models/tiny-gpt2
# => arch=gpt2
# => layers=9
# => params=120576
load data datasets/text/licenses.txt
# => path=datasets/text/licenses.txt
# => tokens=144573
# => test_tokens=14457
# => calib_windows=8
quant * int3 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int3
# => matched=9
# => bits_per_weight=3.19642857
eval
# => regime=weight-only
# => tokens=14400
# => float.ppl=5.14510205
# => float.loss=1.6380452
# => quant.ppl=5.73151184
# => quant.loss=1.74597934
# => kl=0.113599948
# => top1_agree=0.797430556
# => bits_per_weight=3.19642857
# => gate=pass
# => gate_threshold=2.43866319
qat steps=127 batch=16 ctx=64 lr=0.0005 min_lr=5e-05 warmup=10 wd=0 clip=1 seed=0
# => steps=127
# => tokens=130048
# => w_sites=9
# => a_sites=0
# => float_loss=1.6380452
# => ptq_loss=1.74597934
# => qat_loss=1.5934286
# => qat_float_loss=1.64640573
# => ste_loss_before=1.74597934
# => ste_loss_after=1.5934286
# => train_loss=1.52653678
# => gap_closed=1.41336882
# => task.float_loss=1.64640573
# => task.unigram_entropy=3.25155092
# => task.threshold=2.43866319
# => gate=pass
# => regime=weight-only
eval
# => regime=weight-only
# => tokens=14400
# => float.ppl=5.18829814
# => float.loss=1.64640573
# => quant.ppl=4.92059076
# => quant.loss=1.5934286
# => kl=0.10891641
# => top1_agree=0.741805556
# => bits_per_weight=3.19642857
# => gate=pass
# => gate_threshold=2.43866319
quant h.0.* int8 gran=tensor clip=max round=nearest range=restricted sym scale=f16 on=a amode=static
# => pattern=h.0.*
# => format=int8
# => matched=4
# => bits_per_weight=3.19642857
qat steps=30 batch=16 ctx=64 lr=0.0003 min_lr=3e-05 warmup=10 wd=0 clip=1 seed=0
# => steps=30
# => tokens=30720
# => w_sites=9
# => a_sites=4
# => float_loss=1.64640573
# => ptq_loss=1.59401181
# => qat_loss=1.59863886
# => qat_float_loss=1.6572874
# => ste_loss_before=1.59401181
# => ste_loss_after=1.59858265
# => train_loss=1.45599769
# => gap_closed=null
# => task.float_loss=1.6572874
# => task.unigram_entropy=3.25155092
# => task.threshold=2.43866319
# => gate=pass
# => regime=weight+activation
load model datasets/models/tiny-llama
# => path=datasets/models/tiny-llama
# => arch=llama
# => layers=15
# => params=123712
quant * int3 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int3
# => matched=15
# => bits_per_weight=3.21770335
qat steps=40 batch=16 ctx=64 lr=0.0005 min_lr=5e-05 warmup=10 wd=0 clip=1 seed=0
# => steps=40
# => tokens=40960
# => w_sites=15
# => a_sites=0
# => float_loss=1.21300857
# => ptq_loss=1.33467918
# => qat_loss=1.26186877
# => qat_float_loss=1.24866737
# => ste_loss_before=1.33467918
# => ste_loss_after=1.26186877
# => train_loss=1.20481594
# => gap_closed=0.598422322
# => task.float_loss=1.24866737
# => task.unigram_entropy=3.25155092
# => task.threshold=2.43866319
# => gate=pass
# => regime=weight-only
load model datasets/models/tiny-llama
# => path=datasets/models/tiny-llama
# => arch=llama
# => layers=15
# => params=123712
quant * int3 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int3
# => matched=15
# => bits_per_weight=3.21770335
qat mode=block order=depth samples=64 steps=8 batch=16 ctx=64 lr=0.0005 min_lr=5e-05 warmup=10 wd=0 clip=1 seed=0
# => steps=8
# => tokens=4096
# => w_sites=15
# => a_sites=0
# => float_loss=1.21300857
# => ptq_loss=1.33467918
# => qat_loss=1.30528205
# => qat_float_loss=1.22683149
# => ste_loss_before=1.33467918
# => ste_loss_after=1.30528205
# => train_loss=0.00631847783
# => gap_closed=0.241612378
# => mode=block
# => order=depth
# => samples=64
# => blocks[0].block=0
# => blocks[0].mse_before=0.00165559047
# => blocks[0].mse_after=0.000995496556
# => blocks[1].block=1
# => blocks[1].mse_before=0.0153520375
# => blocks[1].mse_after=0.0108828187
# => task.float_loss=1.22683149
# => task.unigram_entropy=3.25155092
# => task.threshold=2.43866319
# => gate=pass
# => regime=weight-only
eval
# => regime=weight-only
# => tokens=14400
# => float.ppl=3.41040648
# => float.loss=1.22683149
# => quant.ppl=3.68872936
# => quant.loss=1.30528205
# => kl=0.105528748
# => top1_agree=0.839861111
# => bits_per_weight=3.21770335
# => gate=pass
# => gate_threshold=2.43866319
load model datasets/models/tiny-gpt2
# => path=datasets/models/tiny-gpt2
# => arch=gpt2
# => layers=9
# => params=120576
quant * int3 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int3
# => matched=9
# => bits_per_weight=3.19642857
qat scales=lsq steps=127 batch=16 ctx=64 lr=0.0005 min_lr=5e-05 warmup=10 wd=0 clip=1 seed=0
# => steps=127
# => tokens=130048
# => w_sites=9
# => a_sites=0
# => float_loss=1.6380452
# => ptq_loss=1.74597934
# => qat_loss=1.59268846
# => qat_float_loss=1.63985633
# => ste_loss_before=1.74597934
# => ste_loss_after=1.59268846
# => train_loss=1.52813545
# => gap_closed=1.42022612
# => scales=lsq
# => lsq_scales=1408
# => lsq_change=0.0605844438
# => task.float_loss=1.63985633
# => task.unigram_entropy=3.25155092
# => task.threshold=2.43866319
# => gate=pass
# => regime=weight-only
eval
# => regime=weight-only
# => tokens=14400
# => float.ppl=5.15442894
# => float.loss=1.63985633
# => quant.ppl=4.9169502
# => quant.loss=1.59268846
# => kl=0.08984387
# => top1_agree=0.769236111
# => bits_per_weight=3.19642857
# => gate=pass
# => gate_threshold=2.43866319
export model /tmp/qscope-session-lsq-gpt2-packed packed
# => path=/tmp/qscope-session-lsq-gpt2-packed
# => kind=packed
# => corrections=0
load model /tmp/qscope-session-lsq-gpt2-packed
# => path=/tmp/qscope-session-lsq-gpt2-packed
# => arch=gpt2
# => layers=9
# => params=136960
load data datasets/text/licenses.txt
# => path=datasets/text/licenses.txt
# => tokens=144573
# => test_tokens=14457
# => calib_windows=8
eval
# => regime=weight-only
# => tokens=14400
# => float.ppl=4.9169502
# => float.loss=1.59268846
# => quant.ppl=4.91719008
# => quant.loss=1.59273725
# => kl=1.19570452e-05
# => top1_agree=0.998333333
# => bits_per_weight=3.19642857
# => gate=pass
# => gate_threshold=2.43866319
load model datasets/models/tiny-llama
# => path=datasets/models/tiny-llama
# => arch=llama
# => layers=15
# => params=123712
quant * int3 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int3
# => matched=15
# => bits_per_weight=3.21770335
qat mode=block order=depth samples=64 scales=lsq steps=8 batch=16 ctx=64 lr=0.0005 min_lr=5e-05 warmup=10 wd=0 clip=1 seed=0
# => steps=8
# => tokens=4096
# => w_sites=15
# => a_sites=0
# => float_loss=1.21300857
# => ptq_loss=1.33467918
# => qat_loss=1.30548324
# => qat_float_loss=1.22721994
# => ste_loss_before=1.33467918
# => ste_loss_after=1.30548324
# => train_loss=0.00628592766
# => gap_closed=0.23995884
# => scales=lsq
# => lsq_scales=1456
# => lsq_change=0.0268218031
# => mode=block
# => order=depth
# => samples=64
# => blocks[0].block=0
# => blocks[0].mse_before=0.00165559047
# => blocks[0].mse_after=0.000978908579
# => blocks[1].block=1
# => blocks[1].mse_before=0.0155548241
# => blocks[1].mse_after=0.011096937
# => task.float_loss=1.22721994
# => task.unigram_entropy=3.25155092
# => task.threshold=2.43866319
# => gate=pass
# => regime=weight-only
eval
# => regime=weight-only
# => tokens=14400
# => float.ppl=3.41173152
# => float.loss=1.22721994
# => quant.ppl=3.68947156
# => quant.loss=1.30548324
# => kl=0.107937875
# => top1_agree=0.835902778
# => bits_per_weight=3.21770335
# => gate=pass
# => gate_threshold=2.43866319
# end of session (27 commands)
