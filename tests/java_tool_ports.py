"""Literal Python ports of the Java code of JACoP 2.1.4 and Fiji's Coloc 2 (test reference).

The tools cannot run here (no Java, no network for Maven or Fiji), so the tests compare the
presets against these ports: statement for statement the Java loops of
``_JACoP.ImageColocalizer`` (``linreg``, ``linregCostes``, ``CostesAutoThr``, ``Overlap``,
``MM``) and of ``sc.fiji.coloc.algorithms`` (``AutoThresholdRegression.execute``,
``SimpleStepper``, ``BisectionStepper``, ``PearsonsCorrelation.fastPearsons``,
``MandersColocalization``), one full pass over the voxels per candidate threshold as the
tools do, vectorised over the voxels only. Independent of cccdask: no import from it.
"""

from __future__ import annotations

import math

import numpy as np


class JavaError(Exception):
    """Where the Java code throws (e.g. an array index of -1)."""


def java_int(x: float) -> int:
    """``(int) x`` for a double."""
    if math.isnan(x):
        return 0
    if x >= 2 ** 31 - 1:
        return 2 ** 31 - 1
    if x <= -(2 ** 31):
        return -(2 ** 31)
    return int(x)  # toward zero


def java_round(x: float) -> int:
    """``Math.round(double)`` (Java 7+: floor(x + 1/2), NaN -> 0)."""
    if math.isnan(x):
        return 0
    if math.isinf(x):
        return 2 ** 63 - 1 if x > 0 else -(2 ** 63)
    return math.floor(x + 0.5)


def java_min(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def java_max(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def divide(a: float, b: float) -> float:
    """Java double division (x/0 is +-Infinity or NaN, not an error)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(a) / np.float64(b))


# ---------------------------------------------------------------------------------------
# JACoP 2.1.4
# ---------------------------------------------------------------------------------------
class JacopPort:
    """``ImageColocalizer`` on the voxels ``A``, ``B`` (1-D integer arrays)."""

    def __init__(self, A: np.ndarray, B: np.ndarray):
        self.A = np.asarray(A, dtype=np.int64)
        self.B = np.asarray(B, dtype=np.int64)
        self.Amin, self.Amax = int(self.A.min()), int(self.A.max())
        self.Bmin, self.Bmax = int(self.B.min()), int(self.B.max())

    def _regression(self, select: np.ndarray) -> list[float]:
        A, B = self.A[select], self.B[select]
        count = int(select.sum())
        sumA, sumB = float(A.sum()), float(B.sum())  # exact: integer sums below 2^53
        sumAB, sumsqrA = float((A * B).sum()), float((A * A).sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            Aarraymean = divide(sumA, count)
            Barraymean = divide(sumB, count)
            num = float(np.sum((A - Aarraymean) * (B - Barraymean)))
            den1 = float(np.sum((A - Aarraymean) ** 2))
            den2 = float(np.sum((B - Barraymean) ** 2))
            denominator = count * sumsqrA - sumA ** 2
            a = divide(count * sumAB - sumA * sumB, denominator)
            b = divide(sumsqrA * sumB - sumA * sumAB, denominator)
            r = divide(num, math.sqrt(den1 * den2))
        return [a, b, r]

    def linreg(self, TA: int, TB: int) -> list[float]:
        """With ``doThat`` true: over ``A >= TA && B >= TB``."""
        return self._regression((self.A >= TA) & (self.B >= TB))

    def linregCostes(self, TA: int, TB: int) -> list[float]:
        return self._regression((self.A < TA) & (self.B < TB))

    def CostesAutoThr(self) -> dict:
        CostesThrA, CostesThrB = self.Amax, self.Bmax
        rmax, rmin = 0.0, 1.0
        ry = []
        count = 0
        a, b, _ = self.linreg(0, 0)
        LoopMin = java_int(java_max(self.Amin, divide(self.Bmin - b, a)))
        LoopMax = java_int(java_min(self.Amax, divide(self.Bmax - b, a)))
        for i in range(LoopMax, LoopMin - 1, -1):
            CostesPearson = self.linregCostes(i, java_int(a * i + b))[2]
            ry.append(CostesPearson)
            if math.isnan(CostesPearson):
                if count != LoopMax:
                    if count == 0:
                        raise JavaError("ArrayIndexOutOfBoundsException: ry[-1]")
                    ry[count] = ry[count - 1]
                else:
                    ry[count] = 1
            if CostesPearson <= rmin and i != LoopMax:
                CostesThrA = i
                CostesThrB = java_int(a * i + b)
            rmax = max(rmax, ry[count])
            rmin = min(rmin, ry[count])
            count += 1
        CostesSumA = float(self.A.sum())
        CostesSumAThr = float(self.A[self.A > CostesThrA].sum())
        CostesSumB = float(self.B.sum())
        CostesSumBThr = float(self.B[self.B > CostesThrB].sum())
        return {
            "threshold1": CostesThrA, "threshold2": CostesThrB, "slope": a, "intercept": b,
            "pearson": self.linreg(CostesThrA, CostesThrB)[2],
            "m1": divide(CostesSumAThr, CostesSumA), "m2": divide(CostesSumBThr, CostesSumB),
            "candidates": list(range(LoopMax, LoopMin - 1, -1)),
        }

    def Overlap(self, thrA: int, thrB: int) -> dict:
        A, B = self.A.astype(np.float64), self.B.astype(np.float64)
        both = (self.A > thrA) & (self.B > thrB)
        numThr = float(np.sum(A[both] * B[both]))
        den1Thr = float(np.sum(A[both] ** 2))
        den2Thr = float(np.sum(B[both] ** 2))
        return {"overlap": divide(numThr, math.sqrt(den1Thr * den2Thr)), "k1": divide(numThr, den1Thr),
                "k2": divide(numThr, den2Thr)}

    def MM(self, thrA: int, thrB: int) -> dict:
        A, B = self.A, self.B
        sumAcolocThr = float(A[(B > thrB) & (A > thrA)].sum())
        sumAThr = float(A[A > thrA].sum())
        sumBcolocThr = float(B[(A > thrA) & (B > thrB)].sum())
        sumBThr = float(B[B > thrB].sum())
        return {"m1": divide(sumAcolocThr, sumAThr), "m2": divide(sumBcolocThr, sumBThr)}


# ---------------------------------------------------------------------------------------
# Coloc 2
# ---------------------------------------------------------------------------------------
class SimpleStepper:
    def __init__(self, threshold: float):
        self.threshold = threshold
        self.currentValue = 1.0
        self.lastValue = math.inf  # Double.MAX_VALUE
        self.finished = False

    def update(self, value: float) -> None:
        if not self.finished:
            self.lastValue = self.currentValue
            self.currentValue = value
            self.threshold = self.threshold - 1.0
            # "Double.NaN == value" is always false in Java; comparisons with NaN are false
            self.finished = self.threshold < 1 or value < 0.0001 or value > self.lastValue

    def getValue(self) -> float:
        return self.threshold

    def isFinished(self) -> bool:
        return self.finished


class BisectionStepper:
    def __init__(self, threshold: float, lastThreshold: float):
        self.threshold1 = threshold
        self.threshold2 = lastThreshold
        self.thrDiff = abs(self.threshold1 - self.threshold2)
        self.iterations = 0
        self.maxIterations = 100

    def update(self, value: float) -> None:
        self.threshold2 = self.threshold1
        if value < 0:  # "Double.NaN == value" is always false
            self.threshold1 = self.threshold1 + self.thrDiff * 0.5
        elif value > 0:
            self.threshold1 = self.threshold1 - self.thrDiff * 0.5
        self.thrDiff = abs(self.threshold1 - self.threshold2)
        self.iterations += 1

    def getValue(self) -> float:
        return self.threshold1

    def isFinished(self) -> bool:
        return self.iterations > self.maxIterations or self.thrDiff < 1.0


def fast_pearsons(ch1: np.ndarray, ch2: np.ndarray) -> float:
    """``PearsonsCorrelation.fastPearsons`` over the given voxels; NaN where it throws."""
    x, y = ch1.astype(np.float64), ch2.astype(np.float64)
    count = x.size
    sx, sy, sxx, sxy, syy = float(x.sum()), float(y.sum()), float(x @ x), float(x @ y), float(y @ y)
    with np.errstate(divide="ignore", invalid="ignore"):
        invCount = divide(1.0, count)
        pearsons1 = sxy - (sx * sy * invCount)
        pearsons2 = sxx - (sx * sx * invCount)
        pearsons3 = syy - (sy * sy * invCount)
        r = divide(pearsons1, math.sqrt(pearsons2 * pearsons3) if pearsons2 * pearsons3 >= 0 else math.nan)
    return r if math.isfinite(r) else math.nan  # MissingPreconditionException -> update(NaN)


class Coloc2Port:
    """``AutoThresholdRegression`` and friends on the voxels of a mask (1-D arrays).

    ``value_range``: the data type's (min, max) the thresholds are clamped to.
    ``skip_first_voxel``: Coloc 2's regression sums leave out the first voxel while its
    means include it (the tool's behaviour; cccdask does not reproduce it).
    """

    def __init__(self, ch1: np.ndarray, ch2: np.ndarray, value_range: tuple[float, float],
                 skip_first_voxel: bool = False):
        self.ch1 = np.asarray(ch1, dtype=np.float64)
        self.ch2 = np.asarray(ch2, dtype=np.float64)
        self.minVal, self.maxVal = value_range
        self.skip = skip_first_voxel
        self.meanCh1, self.meanCh2 = float(self.ch1.mean()), float(self.ch2.mean())

    def clamp(self, val: float) -> float:
        return self.minVal if self.minVal > val else self.maxVal if self.maxVal < val else val

    def regression(self) -> tuple[float, float]:
        start = 1 if self.skip else 0
        ch1, ch2 = self.ch1[start:], self.ch2[start:]
        combinedMean = self.meanCh1 + self.meanCh2
        ch1MeanDiffSum = float(np.sum((ch1 - self.meanCh1) ** 2))
        ch2MeanDiffSum = float(np.sum((ch2 - self.meanCh2) ** 2))
        combinedMeanDiffSum = float(np.sum((ch1 + ch2 - combinedMean) ** 2))
        N = ch1.size
        ch1Variance = ch1MeanDiffSum / (N - 1)
        ch2Variance = ch2MeanDiffSum / (N - 1)
        combinedVariance = combinedMeanDiffSum / (N - 1.0)
        ch1ch2Covariance = 0.5 * (combinedVariance - (ch1Variance + ch2Variance))
        denom = 2 * ch1ch2Covariance
        num = ch2Variance - ch1Variance + math.sqrt(
            (ch2Variance - ch1Variance) * (ch2Variance - ch1Variance) + (4 * ch1ch2Covariance * ch1ch2Covariance))
        m = divide(num, denom)
        b = self.meanCh2 - m * self.meanCh1
        return m, b

    def pearson_below(self, t1: float, t2: float) -> float:
        below = (self.ch1 < t1) | (self.ch2 < t2)
        return fast_pearsons(self.ch1[below], self.ch2[below])

    def pearson_above(self, t1: float, t2: float) -> float:
        above = (self.ch1 > t1) | (self.ch2 > t2)
        return fast_pearsons(self.ch1[above], self.ch2[above])

    def execute(self, implementation: str = "Costes") -> dict:
        """``implementation``: ``"Costes"`` (SimpleStepper) or ``"Bisection"``."""
        m, b = self.regression()
        if -1 < m < 1:
            def getCh1Threshold(t):
                return t

            def getCh2Threshold(t):
                return (t * m) + b
            low, high = float(self.ch1.min()), float(self.ch1.max())
        else:
            def getCh1Threshold(t):
                return divide(t - b, m)

            def getCh2Threshold(t):
                return t
            low, high = float(self.ch2.min()), float(self.ch2.max())
        if implementation == "Bisection":
            stepper = BisectionStepper(abs(high + low) * 0.5, high)
        else:
            stepper = SimpleStepper(high)
        ch1ThreshMax, ch2ThreshMax = float(self.ch1.max()), float(self.ch2.max())
        steps = 0
        while not stepper.isFinished():
            ch1ThreshMax = java_round(getCh1Threshold(stepper.getValue()))
            ch2ThreshMax = java_round(getCh2Threshold(stepper.getValue()))
            thresholdCh1 = self.clamp(ch1ThreshMax)
            thresholdCh2 = self.clamp(ch2ThreshMax)
            stepper.update(self.pearson_below(thresholdCh1, thresholdCh2))
            steps += 1
        t1, t2 = self.clamp(ch1ThreshMax), self.clamp(ch2ThreshMax)
        return {"threshold1": t1, "threshold2": t2, "slope": m, "intercept": b, "steps": steps,
                "pearson_below": self.pearson_below(t1, t2), "pearson_above": self.pearson_above(t1, t2),
                **self.manders(t1, t2)}

    def manders(self, t1: float, t2: float) -> dict:
        """``MandersColocalization``, ThresholdMode.Above: tM1, tM2."""
        ch1, ch2 = self.ch1, self.ch2
        m1 = divide(float(ch1[(ch2 > 0) & (ch2 >= t2)].sum()), float(ch1.sum()))
        m2 = divide(float(ch2[(ch1 > 0) & (ch1 >= t1)].sum()), float(ch2.sum()))
        return {"m1": m1, "m2": m2}
