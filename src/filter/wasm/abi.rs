//! The host's side of the WIT `batch` record, lowered into the guest's
//! memory like wasmtime's derived code would, except for the events.
//!
//! wasmtime lowers a `list<record>` element by element and field by field,
//! looking the guest's memory up again for every `u32`: for the 13 spans
//! of an event that was most of what a call cost. A list of [`Row`]s is
//! written in one pass instead. The canonical ABI lays a record out as its
//! fields in order, each at its alignment (Component Model
//! `CanonicalABI.md`, "Storing": `store_record`); a record of 13
//! `span { start: u32, len: u32 }` is 26 little-endian `u32`s, 104 bytes,
//! aligned to 4. The type check stays wasmtime's: [`Row`] checks as the
//! generated `event` does, so a guest built against another layout is
//! rejected before any call.

use super::bindings::audit_forwarder::filter::types::{Event, Span};
use std::mem::MaybeUninit;
use wasmtime::component::__internal::{
    CanonicalAbiInfo, InstanceType, InterfaceType, LowerContext,
};
use wasmtime::component::{ComponentType, Lower};

/// WIT `types.batch`, borrowing the host's buffers.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
pub struct Batch<'a> {
    #[component(name = "text")]
    pub text: &'a [u8],
    #[component(name = "groups")]
    pub groups: &'a [Span],
    #[component(name = "events")]
    pub events: &'a [Row],
}

/// One WIT `event`, stored in bulk by [`Lower::linear_store_list_to_memory`].
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Row(pub Event);

/// Bytes of one event in guest memory.
const ROW: usize = 26 * 4;
const _: () = assert!(<Event as ComponentType>::SIZE32 == ROW);
const _: () = assert!(<Event as ComponentType>::ALIGN32 == 4);

impl Row {
    /// The 26 `u32`s in the order of the WIT record's fields.
    fn words(&self) -> [u32; 26] {
        let e = &self.0;
        let s = [
            e.json,
            e.audit_id,
            e.verb,
            e.username,
            e.groups,
            e.namespace,
            e.resource,
            e.subresource,
            e.name,
            e.api_group,
            e.stage,
            e.level,
            e.request_uri,
        ];
        let mut w = [0u32; 26];
        for (i, sp) in s.iter().enumerate() {
            w[2 * i] = sp.start;
            w[2 * i + 1] = sp.len;
        }
        w
    }
}

// SAFETY: the ABI, the flat representation and the type check are those
// of the generated `Event` (wasmtime's derive); only storing a list
// differs, and it writes the same bytes (tests/wasm.rs
// `guests_read_every_field_from_the_batch` reads every field back).
unsafe impl ComponentType for Row {
    type Lower = <Event as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <Event as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <Event as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: see `ComponentType` above.
unsafe impl Lower for Row {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        dst: &mut MaybeUninit<Self::Lower>,
    ) -> wasmtime::Result<()> {
        self.0.linear_lower_to_flat(cx, ty, dst)
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        self.0.linear_lower_to_memory(cx, ty, offset)
    }

    fn linear_store_list_to_memory<T>(
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        offset: usize,
        items: &[Self],
    ) -> wasmtime::Result<()> {
        // `lower_list` allocated `items.len() * SIZE32` bytes at `offset`
        // (aligned) through the guest's realloc; a range outside memory is
        // an error, not a panic.
        let mem = cx.as_slice_mut();
        let dst = offset
            .checked_add(items.len() * ROW)
            .and_then(|end| mem.get_mut(offset..end))
            .ok_or_else(|| wasmtime::format_err!("list of events out of bounds"))?;
        for (row, e) in dst.chunks_exact_mut(ROW).zip(items) {
            for (b, w) in row.chunks_exact_mut(4).zip(e.words()) {
                b.copy_from_slice(&w.to_le_bytes());
            }
        }
        Ok(())
    }
}
