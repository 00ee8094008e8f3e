"""The tiny FedMMKT setting the knowledge-transfer tests share: a tiny generator and task models."""

KT_TINY = [
    "run.threads=1",
    "algorithm.rounds=2",
    "t2i.text=tiny", "t2i.channels=8,16", "t2i.image_size=16", "t2i.pretrain_steps=3", "t2i.pretrain_per_class=2",
    "t2i.sample_steps=2", "t2i.server_steps=2", "t2i.server_batch=8",
    "fedmmkt.colors=red,blue", "fedmmkt.shapes=circle,square", "fedmmkt.domains=night,sketch,night",
    "fedmmkt.archs=cnn,mlp,cnn", "fedmmkt.train_per_class=2", "fedmmkt.test_per_class=2",
    "fedmmkt.judge_per_class=3", "fedmmkt.synthetic_per_class=2", "fedmmkt.eval_per_class=2",
    "fedmmkt.local_epochs=1",
]
