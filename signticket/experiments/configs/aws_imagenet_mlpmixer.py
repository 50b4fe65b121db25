"""AWS paper scale: ImageNet MLP-Mixer (script/imagenet_mlpmixer_aws.sh and imagenet_mlpmixer.sh
(LRR): **Adam** lr 1e-3, wd 5e-5 (coupled, torch Adam; optim/utils.py:7-8), 20 warm-up epochs,
10 rounds x 5 epochs at constant LR, final 100 epochs with CosineAnnealingLR(T_max=epochs,
eta_min=lr * 0.001) stepped per epoch; batch **512** for the mixer (data/utils.py:70-73)). The
model is the official ``MLPMixer(image_size=224, channels=3, patch_size=16, dim=512, depth=12,
num_classes=1000)`` (models/utils.py:42-43); AWS interpolates its LayerNorms as BatchNorms
(train.py:177-185). Streamed through tf.data like ImageNet ResNet-50."""

from signticket.experiments.configs.aws_common import adam, base, paper_numbers


def get_config():
    c = base(
        model="mlp_mixer", dataset="imagenet2012", optimizer=adam(1e-3, 5e-5, "constant"),
        final_optimizer=adam(1e-3, 5e-5, "torch_cosine", eta_min_ratio=1e-3), batch_size=512,
        warmup_epochs=20, rounds=10, epochs_per_round=5, final_epochs=100, final_rounds=(10,),
        seeds=(0,), model_kwargs={"image_size": 224, "patch_size": 16, "dim": 512, "depth": 12},
    )
    c.data.image_size = 224
    c.experiment.paper = paper_numbers("imagenet_mlpmixer")
    return c
