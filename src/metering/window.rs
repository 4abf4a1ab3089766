//! What a meter gathers between two receipts: per GPU, the mean utilization, the memory
//! high-water mark and the energy drawn. Pure.

use std::collections::BTreeMap;

use crate::gpu::Sample;
use crate::wire::proto::GpuUsage;

#[derive(Clone, Debug, Default)]
struct GpuWindow {
    utilization_sum: u64,
    samples: u64,
    memory_high_water: u64,
    /// The energy counter at the window's first and latest sample.
    energy_first: Option<u64>,
    energy_last: u64,
}

/// Samples of one receipt window, by GPU UUID.
#[derive(Clone, Debug, Default)]
pub struct Window {
    gpus: BTreeMap<String, GpuWindow>,
    /// Each GPU's energy counter when the previous window closed, so that no energy between two
    /// windows is lost.
    carried_energy: BTreeMap<String, u64>,
}

impl Window {
    pub fn record(&mut self, uuid: &str, sample: Sample) {
        let gpu = self.gpus.entry(uuid.to_string()).or_default();
        gpu.utilization_sum += u64::from(sample.utilization_percent.min(100));
        gpu.samples += 1;
        gpu.memory_high_water = gpu.memory_high_water.max(sample.memory_used_bytes);
        if gpu.energy_first.is_none() {
            gpu.energy_first = Some(
                self.carried_energy
                    .get(uuid)
                    .copied()
                    .unwrap_or(sample.energy_total_millijoules),
            );
        }
        gpu.energy_last = sample.energy_total_millijoules;
    }

    /// Closes the window: its per-GPU figures, and a fresh window that continues the energy
    /// counters from here.
    pub fn close(self) -> (Vec<GpuUsage>, Window) {
        let mut carried = self.carried_energy;
        let usage = self
            .gpus
            .into_iter()
            .map(|(uuid, gpu)| {
                let first = gpu.energy_first.unwrap_or(gpu.energy_last);
                carried.insert(uuid.clone(), gpu.energy_last);
                GpuUsage {
                    uuid,
                    utilization_percent: (gpu.utilization_sum / gpu.samples.max(1)) as u32,
                    memory_high_water_bytes: gpu.memory_high_water,
                    // A counter that went backwards (driver reload) counts from zero again.
                    energy_millijoules: gpu
                        .energy_last
                        .checked_sub(first)
                        .unwrap_or(gpu.energy_last),
                }
            })
            .collect();
        (
            usage,
            Window {
                gpus: BTreeMap::new(),
                carried_energy: carried,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(utilization: u32, memory: u64, energy: u64) -> Sample {
        Sample {
            utilization_percent: utilization,
            memory_used_bytes: memory,
            energy_total_millijoules: energy,
        }
    }

    #[test]
    fn a_window_averages_tracks_the_high_water_and_carries_energy_over() {
        let mut window = Window::default();
        window.record("GPU-a", sample(20, 100, 1_000));
        window.record("GPU-a", sample(40, 300, 1_500));
        window.record("GPU-a", sample(60, 200, 2_000));
        let (usage, mut next) = window.close();
        assert_eq!(
            usage,
            vec![GpuUsage {
                uuid: "GPU-a".into(),
                utilization_percent: 40,
                memory_high_water_bytes: 300,
                energy_millijoules: 1_000,
            }]
        );
        // The next window counts from the previous window's last reading, not its own first:
        // the energy between the two samples belongs to someone, and is not dropped.
        next.record("GPU-a", sample(50, 50, 2_600));
        let (usage, _) = next.close();
        assert_eq!(usage[0].energy_millijoules, 600);
        assert_eq!(usage[0].memory_high_water_bytes, 50);
    }

    #[test]
    fn a_counter_reset_counts_from_zero_and_an_empty_window_reports_nothing() {
        let mut window = Window::default();
        window.record("GPU-a", sample(10, 1, 5_000));
        let (_, mut next) = window.close();
        next.record("GPU-a", sample(10, 1, 300));
        assert_eq!(next.close().0[0].energy_millijoules, 300);
        assert!(Window::default().close().0.is_empty());
    }
}
