//! Rolling-element bearing defect frequencies from the bearing's geometry.
//!
//! A spall on a race or ball is struck at a rate fixed by geometry and shaft speed, so energy
//! (or an envelope peak) at that rate points at the defective part. With `n` balls, ball
//! diameter `d`, pitch diameter `D`, contact angle `φ`, shaft frequency `f_r`, outer race
//! stationary, and `r = (d/D)·cos φ`:
//!
//! - FTF (cage) = `f_r/2 · (1 − r)`
//! - BPFO (outer race) = `n·f_r/2 · (1 − r)` = `n · FTF`
//! - BPFI (inner race) = `n·f_r/2 · (1 + r)`
//! - BSF (ball spin) = `D/(2d) · f_r · (1 − r²)`; a ball defect strikes both races, so it often
//!   shows at 2 × BSF too.
//!
//! These ignore slip, so real peaks sit within a percent or two of them; [`DefectFrequencies::bands`]
//! leaves room for that.

use super::{FeatureError, vibration::Band};

/// A bearing's geometry, as the catalogue gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BearingGeometry {
    /// Rolling elements per row.
    pub balls: u32,
    pub ball_diameter_mm: f64,
    /// Diameter of the circle through the ball centres.
    pub pitch_diameter_mm: f64,
    /// 0° for a deep-groove ball bearing under radial load.
    pub contact_angle_deg: f64,
}

/// Defect frequencies in Hz at one shaft speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DefectFrequencies {
    /// Ball pass frequency, outer race.
    pub bpfo: f64,
    /// Ball pass frequency, inner race.
    pub bpfi: f64,
    /// Ball spin frequency.
    pub bsf: f64,
    /// Fundamental train (cage) frequency.
    pub ftf: f64,
}

impl BearingGeometry {
    /// The defect frequencies at shaft frequency `shaft_hz` (rpm / 60).
    ///
    /// # Errors
    /// No balls, a ball diameter that is not positive or not below the pitch diameter, a contact
    /// angle outside [0°, 90°), or a shaft speed that is not positive (a stopped machine has no
    /// defect frequencies to look for).
    pub fn defect_frequencies(&self, shaft_hz: f64) -> Result<DefectFrequencies, FeatureError> {
        self.validate()?;
        if !(shaft_hz.is_finite() && shaft_hz > 0.0) {
            return Err(FeatureError::ShaftSpeed(shaft_hz));
        }
        let (d, pitch) = (self.ball_diameter_mm, self.pitch_diameter_mm);
        let r = d / pitch * self.contact_angle_deg.to_radians().cos();
        let n = f64::from(self.balls);
        Ok(DefectFrequencies {
            bpfo: n * shaft_hz / 2.0 * (1.0 - r),
            bpfi: n * shaft_hz / 2.0 * (1.0 + r),
            bsf: pitch / (2.0 * d) * shaft_hz * (1.0 - r * r),
            ftf: shaft_hz / 2.0 * (1.0 - r),
        })
    }

    /// Checks the geometry on its own, e.g. when a config is loaded before any shaft speed is known.
    ///
    /// # Errors
    /// As [`defect_frequencies`](Self::defect_frequencies), less the shaft speed.
    pub fn validate(&self) -> Result<(), FeatureError> {
        if self.balls == 0 {
            return Err(FeatureError::NoBalls);
        }
        let (d, pitch) = (self.ball_diameter_mm, self.pitch_diameter_mm);
        if !(d.is_finite() && pitch.is_finite() && d > 0.0 && d < pitch) {
            return Err(FeatureError::BearingDiameters { ball_mm: d, pitch_mm: pitch });
        }
        let angle = self.contact_angle_deg;
        if !(angle.is_finite() && (0.0..90.0).contains(&angle)) {
            return Err(FeatureError::ContactAngle(angle));
        }
        Ok(())
    }
}

impl DefectFrequencies {
    /// A band `[f·(1 − fraction), f·(1 + fraction))` around each frequency, named
    /// `{prefix}bpfo`, `{prefix}bpfi`, `{prefix}bsf` and `{prefix}ftf` (e.g. prefix `"de_"` for
    /// the drive end). [`VibrationAnalyzer::new`](super::VibrationAnalyzer::new) refuses a band
    /// that comes out empty or inverted, naming it.
    pub fn bands(&self, prefix: &str, fraction: f64) -> [Band; 4] {
        let band =
            |what: &str, f: f64| Band::new(format!("{prefix}{what}"), f * (1.0 - fraction), f * (1.0 + fraction));
        [band("bpfo", self.bpfo), band("bpfi", self.bpfi), band("bsf", self.bsf), band("ftf", self.ftf)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SKF 6205 deep-groove ball bearing.
    const B6205: BearingGeometry =
        BearingGeometry { balls: 9, ball_diameter_mm: 7.94, pitch_diameter_mm: 39.04, contact_angle_deg: 0.0 };

    #[test]
    fn a_6205_at_1797_rpm_matches_worked_values() {
        // r = 7.94 / 39.04 = 0.203381; 9 × 29.95 / 2 = 134.775.
        let f = B6205.defect_frequencies(29.95).unwrap();
        let near = |got: f64, want: f64| (got - want).abs() < 0.01;
        assert!(near(f.bpfo, 107.364), "bpfo {}", f.bpfo); // 134.775 × 0.796619
        assert!(near(f.bpfi, 162.186), "bpfi {}", f.bpfi); // 134.775 × 1.203381
        assert!(near(f.ftf, 11.929), "ftf {}", f.ftf); // 14.975 × 0.796619
        assert!(near(f.bsf, 70.583), "bsf {}", f.bsf); // 2.458438 × 29.95 × 0.958636
        // The figures the brief quoted, to their own precision.
        assert!((f.bpfo - 107.4).abs() < 0.05 && (f.bpfi - 162.2).abs() < 0.05);
    }

    #[test]
    fn the_frequencies_keep_their_identities() {
        let angled = BearingGeometry { contact_angle_deg: 40.0, ..B6205 };
        for g in [B6205, angled] {
            let f = g.defect_frequencies(50.0).unwrap();
            assert!((f.bpfo + f.bpfi - 9.0 * 50.0).abs() < 1e-9, "{f:?}");
            assert!((f.bpfo - 9.0 * f.ftf).abs() < 1e-9, "{f:?}");
        }
        // A contact angle brings the balls' effective diameter down: outer pass rises.
        let flat = B6205.defect_frequencies(50.0).unwrap();
        let steep = angled.defect_frequencies(50.0).unwrap();
        assert!(steep.bpfo > flat.bpfo && steep.bpfi < flat.bpfi);
    }

    #[test]
    fn bands_straddle_each_frequency() {
        let f = B6205.defect_frequencies(29.95).unwrap();
        let bands = f.bands("de_", 0.05);
        let names: Vec<&str> = bands.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["de_bpfo", "de_bpfi", "de_bsf", "de_ftf"]);
        assert!((bands[0].low_hz - f.bpfo * 0.95).abs() < 1e-9 && (bands[0].high_hz - f.bpfo * 1.05).abs() < 1e-9);
        assert!(bands[1].low_hz < f.bpfi && f.bpfi < bands[1].high_hz);
    }

    #[test]
    fn impossible_geometry_is_refused() {
        let bad = |g: BearingGeometry| g.defect_frequencies(30.0).unwrap_err();
        assert_eq!(bad(BearingGeometry { balls: 0, ..B6205 }), FeatureError::NoBalls);
        assert_eq!(
            bad(BearingGeometry { ball_diameter_mm: 40.0, ..B6205 }),
            FeatureError::BearingDiameters { ball_mm: 40.0, pitch_mm: 39.04 }
        );
        assert!(matches!(
            bad(BearingGeometry { ball_diameter_mm: 0.0, ..B6205 }),
            FeatureError::BearingDiameters { .. }
        ));
        assert_eq!(bad(BearingGeometry { contact_angle_deg: 90.0, ..B6205 }), FeatureError::ContactAngle(90.0));
        assert_eq!(bad(BearingGeometry { contact_angle_deg: -1.0, ..B6205 }), FeatureError::ContactAngle(-1.0));
        for shaft in [0.0, -3.0, f64::NAN] {
            assert!(matches!(B6205.defect_frequencies(shaft), Err(FeatureError::ShaftSpeed(_))), "{shaft}");
        }
    }
}
