"""Segmentation losses of StrokeNet: binary focal loss (Lin et al. 2017) and soft Dice (Milletari et al. 2016).

Both take LOGITS and are numerically stable for any finite logit (tested at +-1e4): every logarithm is taken in
log space (`log_sigmoid`, log-sum-exp), never of a probability that may have rounded to 0 or 1. `gamma` and
`alpha` may be Python floats or scalar tensors, so a curriculum can change them between stages without
retracing a `tf.function` that takes them as arguments.

Example:
>>> labels = tf.constant([[1.0, 0.0]])
>>> logits = tf.constant([[2.0, -1.0]])
>>> np.round(focal_loss(labels, logits, alpha=0.25, gamma=2.0).numpy(), 5)  # per voxel
array([[0.00045, 0.01699]], dtype=float32)
>>> round(float(FocalDiceLoss(alpha=0.25, gamma=2.0, dice_weight=1.0)(labels, logits)), 4)  # scalar
0.132
"""

from __future__ import annotations

import keras
import tensorflow as tf

REDUCTIONS = ("none", "mean", "sum")


def _as_float(x, dtype=None):
    x = tf.convert_to_tensor(x)
    if dtype is None:
        dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
    return tf.cast(x, dtype)


def _reduce(values, reduction: str):
    if reduction == "none":
        return values
    if reduction == "mean":
        return tf.reduce_mean(values)
    if reduction == "sum":
        return tf.reduce_sum(values)
    raise ValueError(f"losses: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def focal_loss(labels, logits, alpha=0.25, gamma=2.0, reduction: str = "none"):
    """Binary focal loss from logits (Lin et al. 2017, "Focal Loss for Dense Object Detection").

    `FL = -alpha_t * (1 - p_t) ** gamma * log(p_t)` with `p = sigmoid(logits)`, `p_t = p` on lesion voxels and
    `1 - p` elsewhere, `alpha_t = alpha` on lesion voxels and `1 - alpha` elsewhere. `gamma = 0` gives
    alpha-balanced binary cross-entropy exactly. Soft labels y in [0, 1] use `p_t = y p + (1 - y)(1 - p)`,
    `alpha_t = y alpha + (1 - y)(1 - alpha)` and the cross-entropy of y, as
    `keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True)` does.

    Stability: `-log(p_t)` is `tf.nn.sigmoid_cross_entropy_with_logits`, and `(1 - p_t) ** gamma` is
    `exp(gamma * log(1 - p_t))` with `log(1 - p_t)` from `log_sigmoid`; so the loss and its gradient are finite
    for any finite logits, and the gradient of a confidently wrong voxel stays about `alpha_t`.

    Args:
        labels: lesion mask, any shape, values in [0, 1] (cast to float).
        logits: same shape as `labels`.
        alpha: weight of the lesion class in (0, 1); float or scalar tensor.
        gamma: focusing parameter >= 0; float or scalar tensor.
        reduction: "none" (per voxel, shape of `labels`), "mean" or "sum".

    Returns:
        float32 (float64 for float64 logits) loss, per voxel or reduced.
    """
    logits = _as_float(logits)
    labels = _as_float(labels, logits.dtype)
    alpha = tf.cast(alpha, logits.dtype)
    gamma = tf.cast(gamma, logits.dtype)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    # log(1 - p_t) = log(y (1 - p) + (1 - y) p), as a log-sum-exp of log-space terms.
    log_terms = tf.stack(
        [tf.math.log(labels) + tf.math.log_sigmoid(-logits), tf.math.log1p(-labels) + tf.math.log_sigmoid(logits)],
        axis=0,
    )
    log_one_minus_pt = tf.reduce_logsumexp(log_terms, axis=0)
    modulating = tf.exp(gamma * log_one_minus_pt)
    alpha_t = labels * alpha + (1.0 - labels) * (1.0 - alpha)
    return _reduce(alpha_t * modulating * cross_entropy, reduction)


def soft_dice_loss(labels, logits, smooth=1.0, per_sample: bool = True):
    """Soft Dice loss `1 - (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth)` with `p = sigmoid(logits)`.

    Milletari et al. 2016 ("V-Net") use squared sums in the denominator; this is the linear form common in
    medical segmentation (e.g. MONAI `DiceLoss`). `smooth` makes an empty label with an empty prediction a loss
    of 0 and keeps the gradient finite.

    Args:
        labels: `[batch, ...]` lesion mask in [0, 1].
        logits: same shape as `labels`.
        smooth: additive smoothing of numerator and denominator.
        per_sample: True: one Dice per example (sums over every axis but the first), shape `[batch]`;
            False: one Dice over the whole batch, a scalar.

    Returns:
        float32 loss, `[batch]` or scalar.
    """
    logits = _as_float(logits)
    labels = _as_float(labels, logits.dtype)
    probabilities = tf.sigmoid(logits)
    axes = tf.range(1, tf.rank(logits)) if per_sample else None
    intersection = tf.reduce_sum(probabilities * labels, axis=axes)
    total = tf.reduce_sum(probabilities, axis=axes) + tf.reduce_sum(labels, axis=axes)
    smooth = tf.cast(smooth, logits.dtype)
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def focal_dice_loss(labels, logits, alpha=0.25, gamma=2.0, focal_weight=1.0, dice_weight=1.0, smooth=1.0):
    """`focal_weight * mean-over-voxels focal loss + dice_weight * soft Dice loss`, one value per example.

    The one definition of the training loss: `FocalDiceLoss` calls it, and the training step calls it with
    scalar-tensor `alpha`, `gamma` and `dice_weight` so that a curriculum changes them without retracing.

    Args:
        labels: `[batch, depth, height, width, 1]` (any `[batch, ...]`) lesion mask in [0, 1].
        logits: same shape as `labels`; float16 logits are computed in float32.
        alpha, gamma: as for `focal_loss`; floats or scalar tensors.
        focal_weight, dice_weight: weights of the two terms; floats or scalar tensors.
        smooth: soft Dice smoothing.

    Returns:
        float32 (float64 for float64 logits) loss, `[batch]`.
    """
    logits = _as_float(logits)
    focal = focal_loss(labels, logits, alpha=alpha, gamma=gamma)
    focal = tf.reduce_mean(tf.reshape(focal, [tf.shape(logits)[0], -1]), axis=1)
    dice = soft_dice_loss(labels, logits, smooth=smooth, per_sample=True)
    return tf.cast(focal_weight, logits.dtype) * focal + tf.cast(dice_weight, logits.dtype) * dice


@keras.saving.register_keras_serializable(package="strokenet_tf")
class FocalDiceLoss(keras.losses.Loss):
    """`focal_weight * mean-over-voxels focal loss + dice_weight * soft Dice loss`, per example.

    `call` returns one value per example (`[batch]`); the Keras `reduction` then averages over the batch
    ("sum_over_batch_size"), so `loss(labels, logits)` is the batch mean. `call` is `focal_dice_loss`, which the
    training step calls directly with tensor parameters (a curriculum changes them inside a traced step).

    Args:
        alpha: focal lesion weight in (0, 1).
        gamma: focal focusing parameter >= 0.
        focal_weight: weight of the focal term.
        dice_weight: weight of the soft Dice term.
        smooth: soft Dice smoothing.
        reduction, name, dtype: as for `keras.losses.Loss`.

    Example:
    >>> loss = FocalDiceLoss(alpha=0.25, gamma=2.0, dice_weight=1.0)
    >>> round(float(loss(tf.ones([2, 4, 8, 8, 1]), tf.zeros([2, 4, 8, 8, 1]))), 4)
    0.3758
    """

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        focal_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "focal_dice",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not 0.0 < alpha < 1.0 or gamma < 0.0 or focal_weight < 0.0 or dice_weight < 0.0:
            raise ValueError(
                f"FocalDiceLoss: need 0 < alpha < 1, gamma >= 0 and weights >= 0, got alpha={alpha}, "
                f"gamma={gamma}, focal_weight={focal_weight}, dice_weight={dice_weight}"
            )
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.focal_weight = float(focal_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        return focal_dice_loss(y_true, y_pred, alpha=self.alpha, gamma=self.gamma, focal_weight=self.focal_weight,
                               dice_weight=self.dice_weight, smooth=self.smooth)

    def get_config(self):
        config = super().get_config()
        config.update(
            alpha=self.alpha, gamma=self.gamma, focal_weight=self.focal_weight, dice_weight=self.dice_weight,
            smooth=self.smooth,
        )
        return config
