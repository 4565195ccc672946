//! ISO 10816-3 (now ISO 20816-3) evaluation zones for industrial machines, from broadband velocity
//! RMS measured on the bearing housings (10–1000 Hz, or 2–1000 Hz below 600 rpm).
//!
//! - Zone A: newly commissioned machines.
//! - Zone B: acceptable for unrestricted long-term operation.
//! - Zone C: not acceptable for long-term continuous operation; plan remedial action.
//! - Zone D: severe enough to cause damage.
//!
//! # Boundaries
//! A velocity exactly on a boundary belongs to the **upper** (worse) zone: `v < A/B` is A,
//! `A/B <= v < B/C` is B, and so on. The tables print "up to", which could be read either way; a
//! monitoring system that must err should err towards the alarm. For the same reason a NaN
//! velocity, which means the measurement failed, reads as zone D rather than passing as A.

/// Machine class, by rated power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MachineGroup {
    /// Large machines, 300 kW to 50 MW; electrical machines with shaft height of 315 mm or more.
    Group1,
    /// Medium machines, 15 kW to 300 kW; electrical machines with shaft height 160–315 mm.
    Group2,
}

/// How the machine is supported: rigid when the lowest natural frequency of machine and support,
/// in the measured direction, is at least 25 % above the main excitation (usually running speed);
/// flexible otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Foundation {
    Rigid,
    Flexible,
}

/// Evaluation zone, ordered from best to worst so rules can write `zone >= Zone::C`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Zone {
    A,
    B,
    C,
    D,
}

/// The zone boundaries of one machine group on one kind of foundation, in mm/s RMS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZoneBoundaries {
    pub ab_mm_s: f64,
    pub bc_mm_s: f64,
    pub cd_mm_s: f64,
}

impl ZoneBoundaries {
    /// The zone of `velocity_rms_mm_s`; a value on a boundary is in the upper zone.
    pub fn zone(&self, velocity_rms_mm_s: f64) -> Zone {
        // Written as `v < boundary` so that NaN, which fails every comparison, falls through to D.
        let v = velocity_rms_mm_s;
        if v < self.ab_mm_s {
            Zone::A
        } else if v < self.bc_mm_s {
            Zone::B
        } else if v < self.cd_mm_s {
            Zone::C
        } else {
            Zone::D
        }
    }
}

/// The boundaries of ISO 10816-3 tables A.1 (group 1) and A.2 (group 2).
pub const fn boundaries(group: MachineGroup, foundation: Foundation) -> ZoneBoundaries {
    let (ab_mm_s, bc_mm_s, cd_mm_s) = match (group, foundation) {
        (MachineGroup::Group1, Foundation::Rigid) => (2.3, 4.5, 7.1),
        (MachineGroup::Group1, Foundation::Flexible) => (3.5, 7.1, 11.0),
        (MachineGroup::Group2, Foundation::Rigid) => (1.4, 2.8, 4.5),
        (MachineGroup::Group2, Foundation::Flexible) => (2.3, 4.5, 7.1),
    };
    ZoneBoundaries { ab_mm_s, bc_mm_s, cd_mm_s }
}

/// The zone of a velocity RMS in mm/s for a machine group on a foundation.
pub fn zone(velocity_rms_mm_s: f64, group: MachineGroup, foundation: Foundation) -> Zone {
    boundaries(group, foundation).zone(velocity_rms_mm_s)
}

#[cfg(test)]
mod tests {
    use super::{Foundation::*, MachineGroup::*, Zone::*, *};

    #[test]
    fn each_table_places_values_inside_and_on_its_boundaries() {
        // (group, foundation, [A/B, B/C, C/D]) straight from the tables, not from `boundaries`.
        let tables = [
            (Group1, Rigid, [2.3, 4.5, 7.1]),
            (Group1, Flexible, [3.5, 7.1, 11.0]),
            (Group2, Rigid, [1.4, 2.8, 4.5]),
            (Group2, Flexible, [2.3, 4.5, 7.1]),
        ];
        for (group, foundation, [ab, bc, cd]) in tables {
            let z = |v: f64| zone(v, group, foundation);
            let cases = [
                (0.0, A),
                (ab * 0.5, A),
                (ab - 1e-9, A),
                (ab, B),
                ((ab + bc) / 2.0, B),
                (bc - 1e-9, B),
                (bc, C),
                ((bc + cd) / 2.0, C),
                (cd - 1e-9, C),
                (cd, D),
                (cd * 3.0, D),
                (f64::INFINITY, D),
            ];
            for (v, want) in cases {
                assert_eq!(z(v), want, "{group:?} {foundation:?} at {v} mm/s");
            }
        }
    }

    #[test]
    fn the_same_velocity_reads_differently_by_class() {
        // 4.0 mm/s: long-term acceptable for three classes, restricted for a medium machine on a
        // rigid foundation.
        assert_eq!(zone(4.0, Group1, Flexible), B);
        assert_eq!(zone(4.0, Group1, Rigid), B);
        assert_eq!(zone(4.0, Group2, Flexible), B);
        assert_eq!(zone(4.0, Group2, Rigid), C);
        assert_eq!(zone(1.0, Group2, Rigid), A);
        assert_eq!(zone(8.0, Group1, Flexible), C);
    }

    #[test]
    fn a_failed_measurement_is_never_zone_a() {
        assert_eq!(zone(f64::NAN, Group1, Flexible), D);
    }

    #[test]
    fn zones_order_from_best_to_worst() {
        assert!(A < B && B < C && C < D);
        assert_eq!(boundaries(Group2, Rigid), ZoneBoundaries { ab_mm_s: 1.4, bc_mm_s: 2.8, cd_mm_s: 4.5 });
    }
}
