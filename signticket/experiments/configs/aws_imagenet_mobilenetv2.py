"""AWS paper scale: ImageNet MobileNetV2 (script/imagenet_mobilenetv2_aws.sh and
imagenet_mobilenetv2.sh (LRR): lr 0.05, wd 5e-5, 20 warm-up epochs, 10 rounds x 5 epochs at
constant LR, final 100 epochs; optim/utils.py:5-6: **SGD** (momentum 0.9) for MobileNetV2 on
ImageNet, CosineAnnealingLR(T_max=epochs, eta_min=lr * 0.001) stepped per epoch; batch 256
(data/utils.py:70-73)). The model is torchvision's ``mobilenet_v2(num_classes=1000,
dropout=0)`` (models/utils.py:40-41). Streamed through tf.data like ImageNet ResNet-50."""

from signticket.experiments.configs.aws_common import base, paper_numbers, sgd


def get_config():
    c = base(
        model="mobilenet_v2_imagenet", dataset="imagenet2012",
        optimizer=sgd(0.05, 5e-5, "constant"),
        final_optimizer=sgd(0.05, 5e-5, "torch_cosine", eta_min_ratio=1e-3), batch_size=256,
        warmup_epochs=20, rounds=10, epochs_per_round=5, final_epochs=100, final_rounds=(10,),
        seeds=(0,),
    )
    c.data.image_size = 224
    c.experiment.paper = paper_numbers("imagenet_mobilenetv2")
    return c
