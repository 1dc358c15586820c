"""Camera matrices for MVDream's camera conditioning (16-d flattened camera-to-world).

Every function takes NumPy arrays or MindSpore Tensors and returns the same
kind. Matrices from angles are built in float64 and cast to float32 at the end,
as the original does (so entries such as 6e-17 appear instead of exact zeros).
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor, ops

# OpenGL (y up, camera looks down -z) -> Blender (z up): y' = -z, z' = y.
_FLIP_YZ = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def create_camera_to_world_matrix(elevation, azimuth):
    """4x4 float64 OpenGL camera-to-world matrix of a camera on the unit sphere
    at (elevation, azimuth) degrees, looking at the origin with +y up."""
    elev, azim = np.radians(elevation), np.radians(azimuth)
    position = np.array([np.cos(elev) * np.sin(azim), np.sin(elev), np.cos(elev) * np.cos(azim)])
    forward = -position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right = right / np.linalg.norm(right)
    up = np.cross(right, forward)
    up = up / np.linalg.norm(up)
    cam2world = np.eye(4)
    cam2world[:3, :3] = np.stack([right, up, -forward], axis=1)
    cam2world[:3, 3] = position
    return cam2world


def convert_opengl_to_blender(camera_matrix):
    """Left-multiply (a batch of) 4x4 camera-to-world matrices by the y/z flip."""
    if isinstance(camera_matrix, np.ndarray):
        return np.matmul(_FLIP_YZ, camera_matrix)
    flip = Tensor(_FLIP_YZ, camera_matrix.dtype)
    if camera_matrix.ndim == 3:
        flip = flip.broadcast_to((camera_matrix.shape[0], 4, 4))
        return ops.bmm(flip, camera_matrix)
    return ops.matmul(flip, camera_matrix)


def normalize_camera(camera_matrix):
    """Flattened (N, 16) cameras with the translation scaled to unit length.

    Unlike the original (whose reshape-and-assign writes the normalised
    translation back into the caller's array/tensor), this never modifies its input.
    """
    if isinstance(camera_matrix, np.ndarray):
        cams = np.array(camera_matrix).reshape(-1, 4, 4)  # copy
        translation = cams[:, :3, 3]
        cams[:, :3, 3] = translation / (np.linalg.norm(translation, axis=1, keepdims=True) + 1e-8)
        return cams.reshape(-1, 16)
    cams = camera_matrix.reshape(-1, 4, 4)
    translation = cams[:, :3, 3:4]
    norm = ops.sqrt((translation * translation).sum(axis=1, keepdims=True))
    translation = translation / (norm + 1e-8)
    # Rebuild the matrices functionally instead of writing into a slice.
    top = ops.concat([cams[:, :3, :3], translation], axis=2)
    cams = ops.concat([top, cams[:, 3:, :]], axis=1)
    return cams.reshape(-1, 16)


def get_camera_np(num_frames, elevation=15, azimuth_start=0, azimuth_span=360, blender_coord=True,
                  extra_view=False):
    """float64 (num_frames [+1], 16) cameras orbiting at one elevation, evenly
    spaced over ``azimuth_span`` degrees; ``extra_view`` appends an all-zero row."""
    angle_gap = azimuth_span / num_frames
    # The original's float arange (same values), cut to num_frames rows: rounding
    # in its length computation could otherwise add one extra view.
    azimuths = np.arange(azimuth_start, azimuth_span + azimuth_start, angle_gap)[:num_frames]
    cameras = []
    for azimuth in azimuths:
        matrix = create_camera_to_world_matrix(elevation, azimuth)
        if blender_coord:
            matrix = convert_opengl_to_blender(matrix)
        cameras.append(matrix.reshape(16))
    if extra_view:
        cameras.append(np.zeros(16))
    return np.stack(cameras, axis=0)


def get_camera(num_frames, elevation=15, azimuth_start=0, azimuth_span=360, blender_coord=True,
               extra_view=False):
    """``get_camera_np`` as a float32 Tensor (the UNet's ``camera`` input)."""
    return Tensor(get_camera_np(num_frames, elevation, azimuth_start, azimuth_span, blender_coord,
                                extra_view).astype(np.float32), ms.float32)
