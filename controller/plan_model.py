"""The plan's vocabulary: every closed set of the plan format as an enum.

Kept apart from the dataclasses so the format description (plan_format) and the
classification (classify) can name them without importing the loader.
"""
import enum


class DeploymentType(enum.Enum):
    FEATURE = "FEATURE"
    HOTFIX = "HOTFIX"
    ROLLBACK = "ROLLBACK"
    CONFIG = "CONFIG"
    MIGRATION = "MIGRATION"


class Risk(enum.Enum):
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


class Environment(enum.Enum):
    DEV = "DEV"
    STAGING = "STAGING"
    PRODUCTION = "PRODUCTION"


class Strategy(enum.Enum):
    BLUE_GREEN = "BLUE-GREEN"
    CANARY = "CANARY"
    ROLLING = "ROLLING"
    BIG_BANG = "BIG-BANG"


class TargetRole(enum.Enum):
    BASELINE = "baseline"
    CANARY = "canary"
    MAIN = "main"


class Arrival(str, enum.Enum):
    CONSTANT = "constant"
    POISSON = "poisson"
    RAMP = "ramp"
    STEPS = "steps"
    CLOSED = "closed"


class RotateMode(str, enum.Enum):
    BODY = "body"
    REQUEST = "request"


class AgentLossPolicy(enum.Enum):
    ABORT = "abort"
    CONTINUE = "continue"
    REDISTRIBUTE = "redistribute"


class TrafficShift(enum.Enum):
    SPLIT = "split"
    HOOK = "hook"


class RelativeTest(enum.Enum):
    MANN_WHITNEY = "mann-whitney"
    KS = "ks"


class HttpMethod(enum.Enum):
    GET = "GET"
    HEAD = "HEAD"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"
    OPTIONS = "OPTIONS"


# Display names from the seed's classification framework, used by reports and explain.
SEED_NAMES = {
    DeploymentType.FEATURE: "xin gong-neng",
    DeploymentType.HOTFIX: "jin-ji xiu-fu",
    DeploymentType.ROLLBACK: "hui-gun",
    DeploymentType.CONFIG: "pei-zhi",
    DeploymentType.MIGRATION: "qian-yi",
    Risk.HIGH: "gao feng-xian",
    Risk.MEDIUM: "zhong feng-xian",
    Risk.LOW: "di feng-xian",
    Environment.DEV: "kai-fa huan-jing",
    Environment.STAGING: "yan-zheng huan-jing",
    Environment.PRODUCTION: "sheng-chan huan-jing",
    Strategy.BLUE_GREEN: "lan-lv bu-shu",
    Strategy.CANARY: "jin-si-que bu-shu",
    Strategy.ROLLING: "gun-dong bu-shu",
    Strategy.BIG_BANG: "yi-ci-xing bu-shu",
}
