"""The reference robot-data dataloader the presets in conf/ build (pipeline.build builds any).

`build_robot_dataset` stands in for an RLDS / Octo / OpenVLA-style training loader:
deterministic synthetic episodes (two cameras, proprio state, actions, a language
instruction) generated from a seed with stateless TensorFlow ops, so nothing is
downloaded and every element can be regenerated bit for bit in a new process.
Point `dataloader._target_` at your own builder to test your real pipeline.
"""

from __future__ import annotations

import math
from typing import Any

from dlckpt.runtime.tf_import import import_tensorflow

INSTRUCTIONS = (
    "pick up the red block",
    "open the top drawer",
    "put the spoon in the bowl",
    "push the button",
    "close the microwave door",
    "stack the green cup on the blue cup",
    "wipe the table with the towel",
    "move the pot to the left burner",
)


# One straight line of stages, as big_vision and octo write a pipeline; its length is the
# stages themselves, each a line or two.
def build_robot_dataset(
    *,
    shuffle_buffer_size: int,
    batch_size: int = 8,
    image_size: int = 64,
    wrist_image_size: int = 0,
    window_size: int = 1,
    buffer_encoded_frames: bool = False,
    jpeg_quality: int = 90,
    num_episodes: int = 200,
    steps_per_episode: int = 40,
    proprio_dim: int = 8,
    action_dim: int = 7,
    num_parallel_calls: int = 2,
    prefetch_batches: int = 2,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Any:
    """A training loader over synthetic episodes: steps, parallel map, shuffle, batch, prefetch.

    Output (one batch): {"observation": {"image_primary": uint8[B, window, S, S, 3],
    "image_wrist": uint8[B, window, s, s, 3] (when wrist_image_size > 0),
    "proprio": float32[B, window, proprio_dim]}, "action": float32[B, action_dim],
    "task": {"language_instruction": string[B]}}.

    With `buffer_encoded_frames`, frames enter the shuffle buffer as JPEG strings and are
    decoded after it (as OpenVLA does), so the buffer and its checkpoint hold the
    compressed frames; otherwise the buffer holds decoded uint8 frames (as Octo does).
    The stream repeats forever, so any buffer size fills. With `process_count` > 1 the
    steps are this process's shard (every process_count-th step from `process_index`), as a
    multi-host job gives each process its own part of the data (`dlckpt multi-host`).
    """
    tf = import_tensorflow()
    cameras = {"image_primary": image_size}
    if wrist_image_size:
        cameras["image_wrist"] = wrist_image_size
    make_step = _step_maker(
        tf, cameras, seed=seed, steps_per_episode=steps_per_episode, window_size=window_size,
        encoded=buffer_encoded_frames, jpeg_quality=jpeg_quality, proprio_dim=proprio_dim,
        action_dim=action_dim,
    )  # fmt: skip
    # Repeat before the shuffle so the stream never runs dry and any buffer size fills.
    steps = tf.data.Dataset.range(num_episodes * steps_per_episode)
    if process_count > 1:  # one process: the graph (and its checkpoint) as it always was
        steps = steps.shard(process_count, process_index)
    steps = steps.repeat()
    dataset = steps.map(make_step, num_parallel_calls=num_parallel_calls, deterministic=True)
    dataset = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    if buffer_encoded_frames:
        dataset = dataset.map(
            _frame_decoder(tf, cameras, window_size),
            num_parallel_calls=num_parallel_calls,
            deterministic=True,
        )
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(prefetch_batches)


def _step_maker(
    tf: Any,
    cameras: dict[str, int],
    *,
    seed: int,
    steps_per_episode: int,
    window_size: int,
    encoded: bool,
    jpeg_quality: int,
    proprio_dim: int,
    action_dim: int,
) -> Any:
    """The map from a step index to its element (build_robot_dataset's output, one step):
    each camera's window of frames (JPEG strings when `encoded`), proprio, action, task."""
    instructions = tf.constant(INSTRUCTIONS)

    def make_step(index: Any) -> dict[str, Any]:
        episode = index // steps_per_episode
        step = index % steps_per_episode
        observation: dict[str, Any] = {}
        for camera_id, (name, size) in enumerate(cameras.items()):
            frames = [
                _frame(tf, seed, camera_id, episode, tf.maximum(step - lag, 0), size)
                for lag in reversed(range(window_size))
            ]
            if encoded:
                frames = [tf.io.encode_jpeg(f, quality=jpeg_quality) for f in frames]
            observation[name] = tf.stack(frames)
        step_seed = tf.stack([tf.constant(seed, tf.int64) * 7919 + 11, index])
        observation["proprio"] = tf.random.stateless_normal(
            [window_size, proprio_dim], seed=step_seed
        )
        return {
            "observation": observation,
            "action": tf.random.stateless_normal([action_dim], seed=step_seed + 1),
            "task": {"language_instruction": tf.gather(instructions, episode % len(INSTRUCTIONS))},
        }

    return make_step


def _frame_decoder(tf: Any, cameras: dict[str, int], window_size: int) -> Any:
    """The map that decodes every camera's JPEG window after the shuffle (as OpenVLA does)."""

    def decode_frames(element: dict[str, Any]) -> dict[str, Any]:
        for name, size in cameras.items():
            encoded = element["observation"][name]
            frames = [tf.io.decode_jpeg(encoded[i], channels=3) for i in range(window_size)]
            element["observation"][name] = tf.ensure_shape(
                tf.stack(frames), [window_size, size, size, 3]
            )
        return element

    return decode_frames


def _frame(tf: Any, seed: int, camera_id: int, episode: Any, step: Any, size: int) -> Any:
    """One camera frame with roughly the statistics of a photograph.

    A scene of smooth shapes (per episode) that drifts with the step, plus sensor noise
    whose strength varies from episode to episode; flat regions compress, textured ones
    don't. Neither constant nor uniform noise: its compressibility sits between the two.
    """
    scene_seed = tf.stack([tf.constant(seed * 101 + camera_id, tf.int64), episode])
    params = tf.random.stateless_uniform([6, 6], seed=scene_seed)
    coords = tf.linspace(0.0, 1.0, size)
    y, x = tf.meshgrid(coords, coords, indexing="ij")
    drift = tf.cast(step, tf.float32) * 0.01
    image = tf.zeros([size, size, 3])
    for k in range(6):
        fx, fy, phase, amplitude = (
            params[k, 0] * 6.0,
            params[k, 1] * 6.0,
            params[k, 2],
            params[k, 3],
        )
        wave = tf.sin(2.0 * math.pi * (fx * (x + drift) + fy * y + phase))
        color = tf.reshape(params[k, 3:6], [1, 1, 3]) - 0.5
        image += amplitude * wave[..., None] * color * 160.0
    # Quantise the scene into flat patches, as surfaces in a photo are.
    image = tf.round(image / 12.0) * 12.0 + 128.0
    # Sensor noise and texture on the objects, a cleaner background elsewhere.
    textured = tf.cast(
        tf.sin(2.0 * math.pi * (params[0, 4] * 3.0 * (x + drift) + params[1, 4] * 3.0 * y)) > -0.5,
        tf.float32,
    )
    noise_level = 1.0 + 4.0 * tf.random.stateless_uniform([], seed=scene_seed + 3)
    noise_seed = tf.stack([scene_seed[0] + 17, episode * 100_003 + tf.cast(step, tf.int64)])
    noise = tf.random.stateless_normal([size, size, 3], seed=noise_seed)
    image += noise * noise_level * textured[..., None]
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
