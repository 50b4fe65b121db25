"""AWS paper scale: ImageNet ResNet-50 (script/imagenet_resnet50_aws.sh: Adam 1e-3, wd 1e-5,
batch 256, 20 warm-up epochs, 10 rounds x 5 epochs at constant LR, final 100 epochs;
optim/utils.py: CosineAnnealingLR(T_max=epochs, eta_min=lr * 0.001) stepped per epoch).
Streamed through tf.data (``signticket.data.load_stream``): RandomResizedCrop
``data.image_size`` + flip for training, resize 256/224 x ``image_size`` + center crop for
evaluation."""

from signticket.experiments.configs.aws_common import adam, base, paper_numbers


def get_config():
    c = base(
        model="resnet50", dataset="imagenet2012", optimizer=adam(1e-3, 1e-5, "constant"),
        final_optimizer=adam(1e-3, 1e-5, "torch_cosine", eta_min_ratio=1e-3), batch_size=256,
        warmup_epochs=20, rounds=10, epochs_per_round=5, final_epochs=100, final_rounds=(10,),
        seeds=(0,),
    )
    c.data.image_size = 224
    c.experiment.paper = paper_numbers("imagenet_resnet50")
    return c
