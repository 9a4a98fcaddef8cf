//! The per-connection slot a protocol layer keeps under the connection's lock.
//!
//! The core gives every connection a byte of protocol bits (`ConnIo::layer_bits`) whose
//! meaning the protocol defines, checked and set by [`Gate`]s atomically with writes, and an
//! [`Attachment`]: one type-erased value for anything else the protocol needs every thread to
//! see, allocated only when used. The core reads neither; it only drops them with the
//! connection.

use std::any::Any;
use std::fmt;

use crate::core::transport::Codec;

/// What a connection keeps beyond the plain case, in one box allocated only while used: the
/// protocol layer's attachment and the transport's codec (TLS). A plain connection that is in
/// no group holds none (a null pointer in its transport).
#[derive(Default)]
pub(crate) struct Extras {
    /// The protocol layer's one value.
    value: Option<Box<dyn Any + Send>>,
    /// The transport's codec.
    pub(crate) codec: Option<Box<dyn Codec>>,
}

impl fmt::Debug for Extras {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extras")
            .field("attachment", &self.value.is_some())
            .field("codec", &self.codec)
            .finish()
    }
}

/// One value of a protocol layer's choosing on a connection, behind the connection's lock,
/// kept in the connection's [`Extras`] (made when first needed, dropped when empty).
pub(crate) struct Attachment<'a>(pub(crate) &'a mut Option<Box<Extras>>);

impl fmt::Debug for Attachment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.0.as_ref().is_some_and(|e| e.value.is_some());
        f.debug_tuple("Attachment").field(&set).finish()
    }
}

impl Attachment<'_> {
    /// The attachment, if there is one of type `T`.
    pub(crate) fn get_mut<T: Any + Send>(&mut self) -> Option<&mut T> {
        self.0.as_mut()?.value.as_mut()?.downcast_mut()
    }

    /// The attachment of type `T`, made with `make` if there is none (replacing one of
    /// another type).
    pub(crate) fn get_or_insert_with<T: Any + Send>(&mut self, make: impl FnOnce() -> T) -> &mut T {
        let extras = self.0.get_or_insert_with(Default::default);
        if !extras.value.as_ref().is_some_and(|a| a.is::<T>()) {
            extras.value = Some(Box::new(make()));
        }
        self.get_mut().expect("just made")
    }

    /// Takes the attachment out if it is a `T` (and the extras box with it, if nothing else
    /// is in it).
    pub(crate) fn take<T: Any + Send>(&mut self) -> Option<T> {
        let extras = self.0.as_mut()?;
        if !extras.value.as_ref()?.is::<T>() {
            return None;
        }
        let value = extras.value.take()?;
        if extras.codec.is_none() {
            *self.0 = None;
        }
        value.downcast().ok().map(|b| *b)
    }
}

/// What a protocol layer's write must respect, checked against its bits under the
/// connection's lock, so that the check and the write are one atomic step for every thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gate {
    /// Any of these bits set: refused with `WriteError::Closed`.
    pub(crate) closed_if: u8,
    /// Any of these bits set: refused with `WriteError::Invalid(why)`.
    pub(crate) invalid_if: u8,
    pub(crate) why: &'static str,
    /// Set once the write is admitted.
    pub(crate) sets: u8,
    /// May pass `max_outbound_bytes`: a closing message must go out under backpressure too.
    pub(crate) past_limit: bool,
}

impl Gate {
    /// A plain byte write: no protocol state involved.
    pub(crate) const NONE: Gate = Gate {
        closed_if: 0,
        invalid_if: 0,
        why: "",
        sets: 0,
        past_limit: false,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_are_typed_and_made_on_demand() {
        let mut extras = None;
        let mut layer = Attachment(&mut extras);
        assert!(layer.get_mut::<u32>().is_none());
        *layer.get_or_insert_with(|| 1u32) += 1;
        assert_eq!(layer.get_mut::<u32>(), Some(&mut 2));
        assert!(
            layer.get_mut::<String>().is_none(),
            "another type is not found"
        );
        assert!(layer.take::<String>().is_none());
        assert_eq!(layer.take::<u32>(), Some(2));
        assert!(layer.get_mut::<u32>().is_none());
        assert!(extras.is_none(), "an empty extras box is given back");
        let mut layer = Attachment(&mut extras);
        layer.get_or_insert_with(|| String::from("x"));
        assert_eq!(layer.get_mut::<String>().map(|s| s.as_str()), Some("x"));
        assert_eq!(
            std::mem::size_of::<Option<Box<Extras>>>(),
            8,
            "a thin pointer"
        );
    }
}
