"""Run scripts: pretrain, finetune, evaluate, publish, explain."""
