"""Keypoint schemas: point names in order and the skeleton. COCO's person, and ShapesWorld's star (its five tips)."""

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

# Limbs as 1-based index pairs, as person_keypoints JSON stores them.
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip

STAR_KEYPOINT_NAMES = ("top_tip", "right_tip", "lower_right_tip", "lower_left_tip", "left_tip")
"""A star's tips, from the topmost clockwise."""

STAR_SKELETON = ((1, 2), (2, 3), (3, 4), (4, 5), (5, 1))

STAR_KEYPOINT_SIGMA = 0.05
"""The OKS sigma of each star tip (as sharp as COCO's wrists, 0.062, or ankles, 0.089, call for, a little less)."""
