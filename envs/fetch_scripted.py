"""Scripted state-machine controllers for the Fetch tasks (``offrl/FetchPush-v4``,
``offrl/FetchPickAndPlace-v4``), the demonstrators of offrl's Fetch datasets.

Both read the flat observation of :class:`offrl.envs.robotics.FetchResFiT` (gripper position
``obs[0:3]``, object position ``obs[3:6]``, finger joints ``obs[9:11]``, goal ``obs[25:28]``) and
command gripper displacements ``clip(gain · (target − grip), −1, 1)`` (Fetch scales an action of 1 to
5 cm). The phases are re-decided from the observation at every step, so a controller recovers when
the object slips or is pushed off line; the only memory is the phase (pushing widens the lateral
tolerance from 1.5 to 3 cm) and the grasp's step counter.

* :class:`PushController`: gripper closed (Fetch blocks it anyway). Let u be the unit vector from
  the object to the goal in the table plane. (1) *approach*: go to a point 6 cm behind the object
  along −u, 8 cm above it, lifting straight up first so as not to sweep the object off the table;
  (2) *descend* there to the object's height; (3) *push*: move along u at the object's height toward the point behind the
  goal, steering to stay on the object–goal line.
* :class:`PickAndPlaceController`: (1) *approach* above the object with the gripper open;
  (2) *descend* to the object; (3) *grasp*: close the gripper for a few steps; (4) *carry* to the
  goal (in the air or on the table) with the gripper closed. If the object leaves the fingers the
  controller starts over at (1).

``noise`` adds N(0, noise²) to every action (then clipped), for more varied demonstrations. Measured
success (100 % over seeds 0–99 for both tasks, no noise): docs/fetch.md.
"""

from __future__ import annotations

import numpy as np

GRIP, OBJ, FINGERS, GOAL = slice(0, 3), slice(3, 6), slice(9, 11), slice(25, 28)


class _Controller:
    gain = 10.0

    def __init__(self, noise: float = 0.0, seed: int | None = None):
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """Call at every episode start."""

    def move(self, grip: np.ndarray, target: np.ndarray) -> np.ndarray:
        return np.clip(self.gain * (target - grip), -1.0, 1.0)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action = self.act(np.asarray(obs, dtype=np.float64))
        if self.noise > 0:
            action = action + self.noise * self.rng.standard_normal(4)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def act(self, obs: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class PushController(_Controller):
    """Approach behind the object, descend, push it along the object–goal line (module doc)."""

    behind = 0.06      # where the gripper stands behind the object's centre, along −u (m)
    hover = 0.08       # approach height above the object (m)
    aligned = 0.015    # lateral tolerance before pushing (m)
    push_speed = 1.0   # largest push action in the table plane (1: no limit; 0.6 gave 99 % over seeds 0–99)
    phase = "approach"

    def act(self, obs: np.ndarray) -> np.ndarray:
        grip, obj, goal = obs[GRIP], obs[OBJ], obs[GOAL]
        d = goal[:2] - obj[:2]
        dist = np.linalg.norm(d)
        u = d / dist if dist > 1e-6 else np.array([1.0, 0.0])
        perp = np.array([-u[1], u[0]])
        rel = grip[:2] - obj[:2]
        along, lateral = rel @ u, rel @ perp
        spot = obj[:2] - self.behind * u
        action = np.zeros(4)
        action[3] = -1.0
        if along > -0.035 or abs(lateral) > self.aligned * (2.0 if self.phase == "push" else 1.0):
            # not behind the object on the line to the goal: go round it, from above
            far = np.linalg.norm(grip[:2] - spot) > 0.02
            if far and grip[2] < obj[2] + self.hover - 0.015:
                target = np.array([grip[0], grip[1], obj[2] + self.hover])  # up first, then across
            else:
                target = np.array([spot[0], spot[1], obj[2] + self.hover])
                if not far:
                    target[2] = obj[2]
            self.phase = "approach"
            action[:3] = self.move(grip, target)
            return action
        if grip[2] > obj[2] + 0.01 and self.phase != "push":
            self.phase = "descend"
            action[:3] = self.move(grip, np.array([spot[0], spot[1], obj[2]]))
            return action
        self.phase = "push"
        # push: the gripper heads for the point behind the goal, correcting sideways drift
        target_xy = goal[:2] - (self.behind - 0.03) * u - 0.5 * lateral * perp
        target = np.array([target_xy[0], target_xy[1], obj[2]])
        action[:3] = self.move(grip, target)
        speed = np.linalg.norm(action[:2])
        if speed > self.push_speed:  # a slow push keeps the block from sliding or turning away
            action[:2] *= self.push_speed / speed
        return action

    def reset(self) -> None:
        self.phase = "approach"


class PickAndPlaceController(_Controller):
    """Approach above the object, descend, grasp, carry to the goal (module doc)."""

    hover = 0.06         # approach height above the object (m)
    grasp_steps = 4      # steps the gripper closes before lifting

    def reset(self) -> None:
        self.phase = "approach"
        self.closing = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        grip, obj, goal = obs[GRIP], obs[OBJ], obs[GOAL]
        rel = obj - grip
        action = np.zeros(4)
        held = np.linalg.norm(rel) < 0.02 and obs[FINGERS].sum() < 0.06
        if self.phase in ("grasp", "carry") and not (np.linalg.norm(rel) < 0.03):
            self.reset()  # lost it
        if self.phase == "approach":
            target = obj + np.array([0.0, 0.0, self.hover])
            action[:3], action[3] = self.move(grip, target), 1.0
            if np.linalg.norm(rel[:2]) < 0.01:
                self.phase = "descend"
            return action
        if self.phase == "descend":
            action[:3], action[3] = self.move(grip, obj), 1.0
            if np.linalg.norm(rel[:2]) > 0.02:
                self.phase = "approach"
            elif abs(rel[2]) < 0.008:
                self.phase, self.closing = "grasp", 0
            return action
        if self.phase == "grasp":
            action[:3], action[3] = self.move(grip, obj), -1.0
            self.closing += 1
            if self.closing >= self.grasp_steps and held:
                self.phase = "carry"
            return action
        action[:3], action[3] = self.move(grip, goal + (grip - obj)), -1.0  # carry: the object onto the goal
        return action


CONTROLLERS = {"push": PushController, "pickandplace": PickAndPlaceController}


def rollout(env, controller: _Controller, seed: int) -> dict[str, np.ndarray]:
    """One episode of ``controller`` in ``env`` from ``reset(seed=seed)``: the episode dict the
    dataset writer takes (observations T+1, actions, rewards, terminations, truncations), plus
    ``success``."""
    obs, _ = env.reset(seed=seed)
    controller.reset()
    observations, actions, rewards, terms, truncs = [obs], [], [], [], []
    success = False
    while True:
        a = controller(obs)
        obs, r, term, trunc, info = env.step(a)
        observations.append(obs)
        actions.append(a)
        rewards.append(r)
        terms.append(term)
        truncs.append(trunc and not term)
        success = success or bool(info.get("is_success", False))
        if term or trunc:
            break
    return {"seed": seed, "observations": np.asarray(observations, dtype=np.float32),
            "actions": np.asarray(actions, dtype=np.float32), "rewards": np.asarray(rewards, dtype=np.float32),
            "terminations": np.asarray(terms, dtype=bool), "truncations": np.asarray(truncs, dtype=bool),
            "success": success}


def success_rate(task: str, episodes: int = 100, seed: int = 0, noise: float = 0.0) -> tuple[float, list[int]]:
    """Success rate of the scripted controller of ``task`` over ``episodes`` episodes seeded
    ``seed, seed + 1, ...``, and the episode lengths."""
    from offrl.envs import make_env
    from offrl.envs.robotics import ENV_IDS

    env = make_env(ENV_IDS[task])
    ctrl = CONTROLLERS[task](noise=noise, seed=seed)
    try:
        eps = [rollout(env, ctrl, seed + i) for i in range(episodes)]
    finally:
        env.close()
    return float(np.mean([e["success"] for e in eps])), [len(e["actions"]) for e in eps]


__all__ = ["PushController", "PickAndPlaceController", "CONTROLLERS", "rollout", "success_rate"]
