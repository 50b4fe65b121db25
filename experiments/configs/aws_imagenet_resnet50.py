"""AWS paper scale: ImageNet ResNet-50 (Adam 1e-3, wd 1e-5, batch 256, 20 warm-up epochs,
10 rounds x 5 epochs, final 100 epochs cosine). Streamed through tf.data
(``signticket.data.load_stream``): RandomResizedCrop ``data.image_size`` + flip for training,
resize 256/224 x ``image_size`` + center crop for evaluation."""

from experiments.configs.aws_common import adam, base


def get_config():
    c = base(
        model="resnet50", dataset="imagenet2012", optimizer=adam(1e-3, 1e-5, "constant"),
        final_optimizer=adam(1e-3, 1e-5, "cosine"), batch_size=256, warmup_epochs=20,
        rounds=10, epochs_per_round=5, final_epochs=100, final_rounds=(5, 10), seeds=(0,),
    )
    c.data.image_size = 224
    return c
