"""Sign-In paper scale: ImageNet ResNet-50, dense-to-sparse / dynamic sparse training with and
without Sign-In at 80 / 90 / 95 % — AC/DC and RiGL (per step), each ± Sign-In — run by the same
experiment as ``sign_in_cpu_dst.py`` (``signticket.experiments.sign_in``, arms ``acdc``,
``acdc_sign_in``, ``rigl``, ``rigl_sign_in``), on the recipe of ``sign_in_imagenet_resnet50.py``
(ours, *unverified*). RiGL: ΔT = 100 steps, α = 0.3, T_end = 0.75 T, ERK start mask (Evci et
al. 2020); AC/DC: 10 % dense warm-up, 5 % phases, final 10 % compressed (Peste et al. 2021).

STR ± Sign-In: the experiment has no STR arm on this branch (``signticket/str_sparsity.py``
exists; its arms and CPU rows are being added separately), and the paper's STR ± Sign-In
ImageNet numbers could not be found here: absent.

Paper numbers (baseline -> + Sign-In, top-1 %), source: the protocol card's table "Paper
numbers" (the same group's HAM README, secondary; the paper's own table could not be read):
AC/DC 75.83 -> 75.90, 74.75 -> 74.74, 72.59 -> 72.88; RiGL 75.02 -> 75.02, 73.70 -> 74.27,
71.89 -> 73.07 at 80 / 90 / 95 %.
"""

from signticket.experiments.configs.sign_in_imagenet_resnet50 import imagenet

PAPER = {"acdc": {"80": 75.83, "90": 74.75, "95": 72.59},
         "acdc_sign_in": {"80": 75.90, "90": 74.74, "95": 72.88},
         "rigl": {"80": 75.02, "90": 73.70, "95": 71.89},
         "rigl_sign_in": {"80": 75.02, "90": 74.27, "95": 73.07}}


def get_config():
    return imagenet(("acdc", "acdc_sign_in", "rigl", "rigl_sign_in"), PAPER)
