//! Built-in policies, embedded from `presets/*.yaml`.

use super::{Policy, PolicyError};

/// Names accepted by [`Policy::preset`].
pub const PRESET_NAMES: [&str; 3] = ["metadata", "minimal", "recommended"];

const METADATA: &str = include_str!("../../../presets/metadata.yaml");
const MINIMAL: &str = include_str!("../../../presets/minimal.yaml");
const RECOMMENDED: &str = include_str!("../../../presets/recommended.yaml");

fn text(name: &str) -> Option<&'static str> {
    match name {
        "metadata" => Some(METADATA),
        "minimal" => Some(MINIMAL),
        "recommended" => Some(RECOMMENDED),
        _ => None,
    }
}

pub(crate) fn is_preset(name: &str) -> bool {
    text(name).is_some()
}

/// Parses a preset through the normal loader; its source is `preset:<name>`.
pub(crate) fn load(name: &str) -> Result<Policy, PolicyError> {
    let text = text(name).ok_or_else(|| PolicyError::UnknownPreset {
        name: name.to_string(),
    })?;
    Policy::from_yaml(text, &format!("preset:{name}"))
}
